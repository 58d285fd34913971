//! The verb table: one row per verb, as smtp-sink's `command_table[]` and
//! `OpenSMTPD`'s check/proceed pairs.
//!
//! A row says in which [`Phase`]s of the dialogue its verb may run (and the
//! reply when it may not), then has a *check* step (may this command run
//! now? a refusal names its reply), a *proceed* step (do it: transaction
//! changes, sink calls, the reply) and a *refuse* step (usually: send the
//! refusal; BDAT must still consume its chunk). End of data and the last
//! BDAT chunk are rows too, so a later rule can act on any of them alike.
//! The session's dispatcher is the only caller; replies come from the
//! settings' table, so a rule can change any of them.

use super::auth::{self, Mechanism};
use super::{
    Act, AuthStep, Ctx, Decision, Out, Query, RuleReply, Session, Settings, Stage, State, Tx,
    Verdict,
};
use crate::proto::command::{Body, Command, Verb};
use crate::proto::dot::Unstuffer;
use crate::proto::forward::{self, Client, Kind};
use crate::proto::reply::ReplyId;

/// Where the dialogue is, as far as command sequencing goes (RFC 5321 4.1.4,
/// RFC 3030 2). Derived from the session, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No HELO/EHLO yet.
    Fresh,
    /// Greeted, no transaction.
    Greeted,
    /// MAIL accepted, no recipient yet.
    Mail,
    /// At least one recipient accepted.
    Rcpt,
    /// At least one BDAT chunk accepted: the envelope is closed.
    Chunking,
}

impl Phase {
    /// How many phases there are.
    pub const COUNT: usize = 5;
}

type Check = fn(&Session, &Settings, &Command<'_>) -> Result<(), ReplyId>;
type Proceed = fn(&mut Session, &Settings, &Command<'_>, &mut Ctx<'_>) -> Option<Out>;
type Refuse = fn(&mut Session, ReplyId, &Command<'_>, &mut Ctx<'_>) -> Option<Out>;

/// One row of the verb table.
pub struct Row {
    /// The verb this row handles.
    pub verb: Verb,
    /// As the verb appears on the wire; `.` for the end of data.
    pub name: &'static str,
    /// Per phase (indexed by `Phase as usize`): `None` if the verb may run,
    /// else the reply that refuses it.
    pub sequence: [Option<ReplyId>; Phase::COUNT],
    check: Check,
    proceed: Proceed,
    refuse: Refuse,
}

impl Row {
    /// The refusal for running this verb in `phase`, if any.
    pub fn refusal(&self, phase: Phase) -> Option<ReplyId> {
        self.sequence.get(phase as usize).copied().flatten()
    }
}

const ANY: [Option<ReplyId>; Phase::COUNT] = [None; Phase::COUNT];
/// Outside a mail transaction only (AUTH, RFC 4954 4; STARTTLS).
const NO_TRANSACTION: [Option<ReplyId>; Phase::COUNT] = [
    None,
    None,
    Some(ReplyId::InTransaction),
    Some(ReplyId::InTransaction),
    Some(ReplyId::InTransaction),
];
/// Content may start once a recipient was accepted.
const CONTENT: [Option<ReplyId>; Phase::COUNT] = [
    Some(ReplyId::NeedMail),
    Some(ReplyId::NeedMail),
    Some(ReplyId::NeedRcpt),
    None,
    None,
];

// Table steps: see the `impl Session` below.
#[allow(clippy::unnecessary_wraps)]
fn ok(_: &Session, _: &Settings, _: &Command<'_>) -> Result<(), ReplyId> {
    Ok(())
}

#[allow(clippy::unnecessary_wraps)]
fn say_refusal(_: &mut Session, r: ReplyId, _: &Command<'_>, _: &mut Ctx<'_>) -> Option<Out> {
    Some(Out::Reply(r))
}

/// A row whose proceed step only answers `reply`.
macro_rules! answer_only {
    ($verb:ident, $name:expr, $reply:ident) => {
        Row {
            verb: Verb::$verb,
            name: $name,
            sequence: ANY,
            check: ok,
            proceed: |_, _, _, _| Some(Out::Reply(ReplyId::$reply)),
            refuse: say_refusal,
        }
    };
}

static ROWS: [Row; Verb::COUNT] = [
    Row {
        verb: Verb::Helo,
        name: "HELO",
        sequence: ANY,
        check: Session::check_hello,
        proceed: Session::proceed_hello,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Ehlo,
        name: "EHLO",
        sequence: ANY,
        check: Session::check_hello,
        proceed: Session::proceed_hello,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Mail,
        name: "MAIL",
        sequence: [
            Some(ReplyId::NeedHelo),
            None,
            Some(ReplyId::NestedMail),
            Some(ReplyId::NestedMail),
            Some(ReplyId::NestedMail),
        ],
        check: Session::check_mail,
        proceed: Session::proceed_mail,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Rcpt,
        name: "RCPT",
        sequence: [
            Some(ReplyId::NeedMail),
            Some(ReplyId::NeedMail),
            None,
            None,
            // The envelope is complete once content began (RFC 3030 2).
            Some(ReplyId::RcptAfterBdat),
        ],
        check: Session::check_rcpt,
        proceed: Session::proceed_rcpt,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Data,
        name: "DATA",
        sequence: [
            Some(ReplyId::NeedMail),
            Some(ReplyId::NeedMail),
            Some(ReplyId::NeedRcpt),
            None,
            Some(ReplyId::DataAfterBdat),
        ],
        check: Session::check_data,
        proceed: Session::proceed_data,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Bdat,
        name: "BDAT",
        sequence: CONTENT,
        check: ok,
        proceed: Session::proceed_bdat,
        refuse: Session::refuse_bdat,
    },
    Row {
        verb: Verb::Rset,
        name: "RSET",
        sequence: ANY,
        check: ok,
        proceed: Session::proceed_rset,
        refuse: say_refusal,
    },
    answer_only!(Noop, "NOOP", Ok),
    answer_only!(Vrfy, "VRFY", Vrfy),
    answer_only!(Expn, "EXPN", NotImplemented),
    answer_only!(Help, "HELP", Help),
    Row {
        verb: Verb::Quit,
        name: "QUIT",
        sequence: ANY,
        check: ok,
        proceed: Session::proceed_quit,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::StartTls,
        name: "STARTTLS",
        sequence: NO_TRANSACTION,
        check: Session::check_starttls,
        proceed: Session::proceed_starttls,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Auth,
        name: "AUTH",
        sequence: [
            Some(ReplyId::NeedHelo),
            None,
            Some(ReplyId::InTransaction),
            Some(ReplyId::InTransaction),
            Some(ReplyId::InTransaction),
        ],
        check: Session::check_auth,
        proceed: Session::proceed_auth,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Lhlo,
        name: "LHLO",
        sequence: ANY,
        check: Session::check_hello,
        proceed: Session::proceed_hello,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Xclient,
        name: "XCLIENT",
        sequence: NO_TRANSACTION,
        check: Session::check_forward,
        proceed: Session::proceed_xclient,
        refuse: say_refusal,
    },
    Row {
        verb: Verb::Xforward,
        name: "XFORWARD",
        sequence: NO_TRANSACTION,
        check: Session::check_forward,
        proceed: Session::proceed_xforward,
        refuse: say_refusal,
    },
    answer_only!(NotImplemented, "SEND/SOML/SAML/TURN/...", NotImplemented),
    Row {
        verb: Verb::EndOfData,
        name: ".",
        sequence: ANY,
        check: Session::check_content,
        proceed: Session::proceed_end,
        refuse: Session::refuse_end,
    },
    Row {
        verb: Verb::LastChunk,
        name: "BDAT LAST",
        sequence: ANY,
        check: Session::check_content,
        proceed: Session::proceed_end,
        refuse: Session::refuse_end,
    },
];

/// The stage a policy is asked about for `verb`.
fn stage_of(verb: Verb) -> Stage {
    match verb {
        Verb::Helo | Verb::Ehlo | Verb::Lhlo => Stage::Helo,
        Verb::Mail => Stage::Mail,
        Verb::Rcpt => Stage::Rcpt,
        Verb::Data => Stage::Data,
        Verb::Bdat => Stage::Bdat,
        Verb::EndOfData | Verb::LastChunk => Stage::EndOfData,
        Verb::Rset => Stage::Rset,
        Verb::Quit => Stage::Quit,
        Verb::Noop
        | Verb::Vrfy
        | Verb::Expn
        | Verb::Help
        | Verb::StartTls
        | Verb::Auth
        | Verb::Xclient
        | Verb::Xforward
        | Verb::NotImplemented => Stage::Other,
    }
}

/// Every row, in [`Verb`] order.
pub fn rows() -> &'static [Row] {
    &ROWS
}

/// The row of `verb`.
pub fn row(verb: Verb) -> &'static Row {
    // The table is in `Verb` order (a test checks it), so `get` always finds
    // the row; the fallback only keeps this free of panics.
    static FALLBACK: Row = answer_only!(NotImplemented, "?", NotImplemented);
    ROWS.get(verb as usize)
        .filter(|r| r.verb == verb)
        .unwrap_or(&FALLBACK)
}

// Every row's steps share one signature (the table holds plain function
// pointers), so some take what they do not use or always answer.
#[allow(
    clippy::unnecessary_wraps,
    clippy::needless_pass_by_value,
    clippy::unused_self
)]
impl Session {
    #[inline]
    fn phase(&self) -> Phase {
        if self.greeted == super::Greeted::No {
            Phase::Fresh
        } else if self.tx.started.is_none() {
            Phase::Greeted
        } else if self.tx.bdat {
            Phase::Chunking
        } else if self.tx.recipients == 0 {
            Phase::Mail
        } else {
            Phase::Rcpt
        }
    }

    /// Runs `cmd` through its row: sequence, check, then proceed or refuse;
    /// the answer is sent or held.
    // Measured (callgrind, pipelined 1 KiB): the reply path is hot enough
    // that a call per reply shows; see README "Performance".
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub(super) fn dispatch<const P: bool>(
        &mut self,
        s: &Settings,
        cmd: &Command<'_>,
        cx: &mut Ctx<'_>,
    ) {
        let verb = cmd.verb();
        let row = row(verb);
        let allowed = match row.refusal(self.phase()) {
            Some(r) => Err(r),
            None => (row.check)(self, s, cmd),
        };
        let out = match allowed {
            // Effects (a refused greeting, a delay) exist only where there
            // is a policy.
            Ok(())
                if P && cx.asks != 0
                    && (self.asks(cx) & stage_of(verb).bit() != 0 || self.fx.is_some()) =>
            {
                return self.dispatch_policy(s, row, cmd, cx);
            }
            Ok(()) => (row.proceed)(self, s, cmd, cx),
            Err(r) => (row.refuse)(self, r, cmd, cx),
        };
        if let Some(out) = out {
            self.answer(s, verb, out, cx);
        }
    }

    /// A command that may run where there is a policy: asks it if its
    /// stage and argument are of interest (or effects are in force).
    fn dispatch_policy(&mut self, s: &Settings, row: &Row, cmd: &Command<'_>, cx: &mut Ctx<'_>) {
        let stage = stage_of(row.verb);
        if stage == Stage::EndOfData
            && self.lmtp.is_some()
            && self.asks(cx) & stage.bit() != 0
            && self.fx.as_ref().is_none_or(|f| !f.refused)
        {
            return self.end_lmtp(s, row, cmd, cx);
        }
        let arg: &[u8] = match cmd {
            Command::Helo(name) | Command::Ehlo(name) | Command::Lhlo(name) => name,
            Command::Mail(m) => m.path,
            Command::Rcpt(r) => r.path,
            _ => &[],
        };
        let interest = cx.interest;
        if stage == Stage::Mail && interest.is_none_or(|i| i.sender) {
            self.sender.clear();
            self.sender.extend_from_slice(arg);
        }
        // Rules refuse BDAT chunks (`tx.refusal`) only where a policy asks
        // about BDAT, and it then asks about the end too.
        let ask = self.asks(cx) & stage.bit() != 0
            && interest.is_none_or(|i| i.wants(stage, arg, self.live));
        if ask || self.fx.is_some() {
            return self.dispatch_ruled(s, row, cmd, (stage, arg, ask), cx);
        }
        if let Some(out) = (row.proceed)(self, s, cmd, cx) {
            self.answer(s, row.verb, out, cx);
        }
    }

    /// A command that may run where effects are in force or the policy is
    /// to be asked (`ask`, as `dispatch_policy` worked out): carries out its
    /// decision around the row's proceed step.
    fn dispatch_ruled(
        &mut self,
        s: &Settings,
        row: &Row,
        cmd: &Command<'_>,
        (stage, arg, ask): (Stage, &[u8], bool),
        cx: &mut Ctx<'_>,
    ) {
        let verb = row.verb;
        if verb != Verb::Quit && self.fx.as_ref().is_some_and(|f| f.refused) {
            // The greeting refused service: only QUIT (RFC 5321 3.1); a
            // BDAT's chunk is still read.
            let out = (row.refuse)(self, ReplyId::ServiceRefused, cmd, cx);
            if let Some(out) = out {
                self.answer(s, verb, out, cx);
            }
            return;
        }
        if !ask {
            // Here for the effects only: the policy has nothing to say.
            let out = (row.proceed)(self, s, cmd, cx);
            if let Some(out) = out {
                self.answer_ruled(s, verb, out, cx);
            }
            return;
        }
        let sender = match stage {
            Stage::Mail => arg,
            _ if self.tx.started.is_some() => &self.sender,
            _ => &[],
        };
        let d = match cx.policy.as_deref_mut() {
            Some(p) => p.decide(&Query {
                id: self.id,
                handle: self.handle,
                stage,
                arg,
                sender,
                peer: self.query_peer(),
                transaction: self.transactions
                    + self.refused_mails
                    + u32::from(stage == Stage::Mail),
                now: cx.now,
            }),
            None => Decision::PROCEED,
        };
        if d.delay.is_some() {
            self.fx().delay = d.delay;
        }
        let mut replace = None;
        match d.act {
            Act::Reply(r) if r.refuses() && stage != Stage::Quit => {
                // A refused MAIL still counts: "the 2nd transaction" fails once.
                self.refused_mails += u32::from(stage == Stage::Mail);
                return self.refuse_by_rule(s, verb, stage, r, cmd, cx);
            }
            Act::Reply(r) => match stage {
                Stage::EndOfData => self.fx().final_text = Some(r),
                Stage::Bdat => self.fx().chunk_text = Some(r),
                _ => replace = Some(r),
            },
            Act::Close => return self.answer_ruled(s, verb, Out::Hangup, cx),
            Act::Throttle(rate) => self.throttle(rate, cx.now),
            // The message in progress: before its end is processed.
            Act::Drop if stage != Stage::Mail => self.tx.drop = true,
            Act::Proceed | Act::CloseAfter(_) | Act::Drop => {}
        }
        let mut out = (row.proceed)(self, s, cmd, cx);
        // MAIL's proceed step begins a fresh transaction: mark it after.
        match d.act {
            Act::Drop if stage == Stage::Mail => self.tx.drop = true,
            Act::CloseAfter(k) => self.tx.cut = k,
            _ => {}
        }
        if let (Some(r), Some(Out::Reply(_))) = (replace, out) {
            out = Some(Out::Rule(r));
        }
        if let Some(out) = out {
            self.answer_ruled(s, verb, out, cx);
        }
    }

    /// LMTP: what rules at the end of the data say about each recipient,
    /// asked once per recipient (its path is the query's argument), so
    /// rules can answer recipients apart (RFC 2033 4.2: mixed 250/452/550).
    /// Asked when the content starts, before the sink's `begin`, so the
    /// sink can leave refused recipients out of what it keeps; carried out
    /// at the end by `end_lmtp`.
    #[cold]
    #[inline(never)]
    fn decide_lmtp(&mut self, cx: &mut Ctx<'_>) {
        let stage = Stage::EndOfData;
        if cx.asks & stage.bit() == 0 || self.asks(cx) & stage.bit() == 0 {
            return;
        }
        let Some(mut lmtp) = self.lmtp.take() else {
            return;
        };
        lmtp.replies.clear();
        let interest = cx.interest;
        for i in 0..self.tx.recipients as usize {
            let arg = lmtp.path(i);
            let d = match cx.policy.as_deref_mut() {
                Some(p) if interest.is_none_or(|n| n.wants(stage, arg, self.live)) => {
                    p.decide(&Query {
                        id: self.id,
                        handle: self.handle,
                        stage,
                        arg,
                        sender: &self.sender,
                        peer: self.query_peer(),
                        transaction: self.transactions + self.refused_mails,
                        now: cx.now,
                    })
                }
                _ => Decision::PROCEED,
            };
            lmtp.delay = lmtp.delay.max(d.delay);
            let reply = match d.act {
                Act::Reply(r) => Some(r),
                Act::Close => {
                    lmtp.close = true;
                    None
                }
                Act::Drop => {
                    self.tx.drop = true;
                    None
                }
                _ => None,
            };
            lmtp.replies.push(reply);
            if reply.is_some_and(|r| r.code == 421) {
                // The session ends at this reply: the recipients after it
                // get none, so they are not delivered either.
                let later = (self.tx.recipients as usize).saturating_sub(i + 1);
                lmtp.replies.extend(std::iter::repeat_n(reply, later));
                break;
            }
        }
        lmtp.decided = true;
        // Last first, so each index still names the recipient it did.
        for (i, r) in lmtp.replies.iter().enumerate().rev() {
            if r.is_some_and(RuleReply::refuses) {
                cx.sink.refused_rcpt(self.id, i);
            }
        }
        self.lmtp = Some(lmtp);
    }

    /// The end of an LMTP message where a policy asks about it: the
    /// recipients' answers as decided (now, if rules came in since the
    /// content began). The longest delay asked for holds all the replies;
    /// a close closes; if every recipient was refused, nothing is kept.
    #[cold]
    #[inline(never)]
    fn end_lmtp(&mut self, s: &Settings, row: &Row, cmd: &Command<'_>, cx: &mut Ctx<'_>) {
        if self.lmtp.as_deref().is_some_and(|l| !l.decided) {
            self.decide_lmtp(cx);
        }
        let Some(lmtp) = self.lmtp.as_deref_mut() else {
            return;
        };
        lmtp.decided = false;
        let (delay, close) = (lmtp.delay.take(), std::mem::take(&mut lmtp.close));
        let delivers = lmtp.replies.len() < self.tx.recipients as usize
            || lmtp.replies.iter().any(|r| r.is_none_or(|r| !r.refuses()));
        if delay.is_some() {
            self.fx().delay = delay;
        }
        let verb = row.verb;
        if close {
            return self.answer_ruled(s, verb, Out::Hangup, cx);
        }
        let out = if delivers {
            (row.proceed)(self, s, cmd, cx)
        } else {
            cx.sink.abort(self.id);
            self.enter(State::Command, cx);
            Some(self.finish(Verdict::Rejected(ReplyId::LocalError)))
        };
        if let Some(out) = out {
            self.answer_ruled(s, verb, out, cx);
        }
    }

    /// HELO and EHLO are SMTP's, LHLO is LMTP's (RFC 2033 4.1): the other
    /// protocol's greeting is an unknown command.
    fn check_hello(&self, _: &Settings, cmd: &Command<'_>) -> Result<(), ReplyId> {
        if matches!(cmd, Command::Lhlo(_)) == self.lmtp.is_some() {
            Ok(())
        } else {
            Err(ReplyId::Unrecognized)
        }
    }

    /// XCLIENT and XFORWARD: offered (`--xclient`, `--xforward`), then
    /// with attributes, then from a `--trusted` address (Postfix's order).
    fn check_forward(&self, s: &Settings, cmd: &Command<'_>) -> Result<(), ReplyId> {
        let (offered, args, syntax) = match cmd {
            Command::Xclient(a) => (s.xclient, a, ReplyId::SyntaxXclient),
            Command::Xforward(a) => (s.xforward, a, ReplyId::SyntaxXforward),
            _ => return Err(ReplyId::NotImplemented),
        };
        if !offered {
            Err(ReplyId::NotImplemented)
        } else if args.is_empty() {
            Err(syntax)
        } else if !self.trusted {
            Err(ReplyId::NotAuthorized)
        } else {
            Ok(())
        }
    }

    /// XCLIENT: the client is who the attributes say (those not given keep
    /// their values); the session starts over as a new connection from it,
    /// greeting included (Postfix's `XCLIENT_README`): rules and limits
    /// see the new address from here on.
    fn proceed_xclient(
        &mut self,
        s: &Settings,
        cmd: &Command<'_>,
        cx: &mut Ctx<'_>,
    ) -> Option<Out> {
        let Command::Xclient(args) = cmd else {
            return None;
        };
        let said = match forward::parse(Kind::Xclient, args) {
            Ok(c) => c,
            Err(r) => return Some(Out::Reply(r)),
        };
        self.reset_tx(cx);
        let told = self.told.get_or_insert_with(Box::default);
        let client = told.xclient.get_or_insert_with(Client::default);
        client.update(said);
        let (peer, login) = (client.socket_addr(), client.login.is_some());
        match peer {
            Some(peer) => self.peer = peer,
            // `ADDR=[UNAVAILABLE]`: no address, as for a UNIX peer.
            None if client.said_addr() => self.peer = super::UNKNOWN_PEER,
            None => {}
        }
        self.greeted = super::Greeted::No;
        self.authenticated = login;
        self.login_user = None;
        if let Some(p) = cx.policy.as_deref_mut() {
            if self.handle != u32::MAX {
                p.closed(self.handle);
            }
            self.handle = u32::MAX;
            // The new client may match other rules.
            self.asks_gen = u32::MAX;
        }
        self.greet(s, cx);
        if let Some(c) = self.told.as_deref().and_then(|t| t.xclient.as_ref()) {
            cx.sink.client(self.id, c, false);
        }
        None
    }

    /// XFORWARD: what the attributes say holds for the next transaction,
    /// until it ends or RSET (Postfix's `XFORWARD_README`); several
    /// XFORWARD commands add up.
    fn proceed_xforward(
        &mut self,
        _: &Settings,
        cmd: &Command<'_>,
        _: &mut Ctx<'_>,
    ) -> Option<Out> {
        let Command::Xforward(args) = cmd else {
            return None;
        };
        let said = match forward::parse(Kind::Xforward, args) {
            Ok(c) => c,
            Err(r) => return Some(Out::Reply(r)),
        };
        let told = self.told.get_or_insert_with(Box::default);
        let forward = told.forward.get_or_insert_with(Client::default);
        forward.update(said);
        if forward.said_addr() {
            // Rules narrowed to the connection's address (`live`, `asks`)
            // may match the forwarded one: ask about everything until the
            // transaction ends.
            self.asks = u16::MAX;
            self.live = u64::MAX;
        }
        Some(Out::Reply(ReplyId::Ok))
    }

    /// A rule's 4xx/5xx instead of running the command.
    fn refuse_by_rule(
        &mut self,
        s: &Settings,
        verb: Verb,
        stage: Stage,
        r: RuleReply,
        cmd: &Command<'_>,
        cx: &mut Ctx<'_>,
    ) {
        match (stage, cmd) {
            (Stage::EndOfData, _) => self.refuse_message(s, verb, r, cx),
            (Stage::Bdat, &Command::Bdat { size, last }) => {
                // The chunk is still read (RFC 3030 2); the refusal answers
                // it and ends the transaction, keeping nothing.
                self.tx.refusal = Some(r);
                self.read_chunk(size, last, None, cx);
            }
            _ => self.answer_ruled(s, verb, Out::Rule(r), cx),
        }
    }

    /// Ends the message in progress with a rule's refusal; nothing is kept.
    pub(super) fn refuse_message(
        &mut self,
        s: &Settings,
        verb: Verb,
        r: RuleReply,
        cx: &mut Ctx<'_>,
    ) {
        cx.sink.abort(self.id);
        self.enter(State::Command, cx);
        let _ = self.finish(Verdict::Rejected(ReplyId::LocalError));
        self.answer_ruled(s, verb, Out::FinalRule(r), cx);
    }

    /// `--require-tls` and the `AUTH=` parameter, out of MAIL's hot path.
    #[cold]
    fn check_mail_security(&self, s: &Settings, auth_param: bool) -> Result<(), ReplyId> {
        if s.security.require_tls && !self.secure {
            Err(ReplyId::TlsRequired)
        } else if auth_param && !s.offers_auth(self.secure) {
            Err(ReplyId::UnsupportedMailParam)
        } else {
            Ok(())
        }
    }

    fn check_starttls(&self, s: &Settings, _: &Command<'_>) -> Result<(), ReplyId> {
        if self.secure {
            // No longer advertised once secured (RFC 3207 4.2).
            Err(ReplyId::TlsActive)
        } else if !s.security.starttls {
            Err(ReplyId::TlsUnavailable)
        } else {
            Ok(())
        }
    }

    /// `220`, then nothing is read until the loop has secured the
    /// transport; what the client pipelined after STARTTLS is dropped.
    fn proceed_starttls(&mut self, _: &Settings, _: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        self.reset_tx(cx);
        self.enter(State::Tls, cx);
        Some(Out::Reply(ReplyId::ReadyTls))
    }

    fn check_auth(&self, s: &Settings, cmd: &Command<'_>) -> Result<(), ReplyId> {
        if s.security.auth.is_none() {
            return Err(ReplyId::NotImplemented);
        }
        if self.authenticated {
            return Err(ReplyId::AuthAgain);
        }
        if !s.offers_auth(self.secure) {
            return Err(ReplyId::AuthNeedsTls);
        }
        match cmd {
            Command::Auth { mechanism, .. } if Mechanism::named(mechanism).is_none() => {
                Err(ReplyId::AuthUnknownMechanism)
            }
            _ => Ok(()),
        }
    }

    /// Starts an exchange: a `334` challenge, or with an initial response
    /// (RFC 4954 4) straight to its next step or its result.
    fn proceed_auth(&mut self, s: &Settings, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        let Command::Auth { mechanism, initial } = cmd else {
            return None;
        };
        let mechanism = Mechanism::named(mechanism)?;
        let Some(initial) = initial else {
            let (step, challenge) = match mechanism {
                Mechanism::Plain => (AuthStep::Plain, auth::PLAIN_READY),
                Mechanism::Login => (AuthStep::LoginUser, auth::LOGIN_USER),
            };
            self.enter(State::Auth(step), cx);
            return Some(Out::Challenge(challenge));
        };
        let Some(data) = auth::decode(initial) else {
            return Some(Out::Reply(ReplyId::AuthBadResponse));
        };
        Some(match mechanism {
            Mechanism::Plain => self.auth_result(s, auth::plain(&data, Self::users(s)), cx),
            Mechanism::Login => {
                self.login_user = Some(data.into_boxed_slice());
                self.enter(State::Auth(AuthStep::LoginPassword), cx);
                Out::Challenge(auth::LOGIN_PASSWORD)
            }
        })
    }

    fn users(s: &Settings) -> &auth::Users {
        s.security.auth.as_ref().map_or(&auth::ANYONE, |a| &a.users)
    }

    /// A response line of the exchange in `step`; the reply to it.
    pub(super) fn auth_response(
        &mut self,
        s: &Settings,
        step: AuthStep,
        line: &[u8],
        cx: &mut Ctx<'_>,
    ) -> Out {
        self.enter(State::Command, cx);
        if line == b"*" {
            self.login_user = None;
            return Out::Reply(ReplyId::AuthCancelled);
        }
        // `=` stands for an empty response only in the initial response.
        let decoded = if line == b"=" {
            None
        } else {
            auth::decode(line)
        };
        let Some(data) = decoded else {
            self.login_user = None;
            return Out::Reply(ReplyId::AuthBadResponse);
        };
        match step {
            AuthStep::Plain => self.auth_result(s, auth::plain(&data, Self::users(s)), cx),
            AuthStep::LoginUser => {
                self.login_user = Some(data.into_boxed_slice());
                self.enter(State::Auth(AuthStep::LoginPassword), cx);
                Out::Challenge(auth::LOGIN_PASSWORD)
            }
            AuthStep::LoginPassword => {
                let user = self.login_user.take().unwrap_or_default();
                let ok = !user.is_empty() && Self::users(s).check(&user, &data);
                self.auth_result(s, Some(ok), cx)
            }
        }
    }

    /// The end of an exchange: `None` malformed, else whether it passed.
    fn auth_result(&mut self, _: &Settings, verdict: Option<bool>, cx: &mut Ctx<'_>) -> Out {
        match verdict {
            Some(true) => {
                self.authenticated = true;
                cx.sink.authenticated(self.id);
                Out::Reply(ReplyId::AuthOk)
            }
            Some(false) => Out::Reply(ReplyId::AuthFailed),
            None => Out::Reply(ReplyId::AuthBadResponse),
        }
    }

    fn proceed_hello(&mut self, _: &Settings, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        // A new greeting resets the transaction (RFC 5321 4.1.4).
        self.reset_tx(cx);
        if let Command::Ehlo(name) | Command::Helo(name) | Command::Lhlo(name) = cmd {
            let mut with = super::With::of(!matches!(cmd, Command::Helo(_)), self.secure);
            if self.lmtp.is_some() {
                with = with.lmtp();
            }
            if self.authenticated {
                // XCLIENT's LOGIN.
                with = with.authenticated();
            }
            // Behind XCLIENT, the name the real client gave.
            let told = self.told.as_deref().and_then(|t| t.xclient.as_ref());
            let name = told.and_then(|c| c.helo.as_deref()).unwrap_or(name);
            cx.sink.hello(self.id, name, with);
        }
        if matches!(cmd, Command::Helo(_)) {
            self.greeted = super::Greeted::Helo;
            Some(Out::Reply(ReplyId::Helo))
        } else {
            self.greeted = super::Greeted::Ehlo;
            Some(Out::Reply(match (self.secure, self.trusted) {
                (false, false) => ReplyId::Ehlo,
                (true, false) => ReplyId::EhloSecure,
                (false, true) => ReplyId::EhloTrusted,
                (true, true) => ReplyId::EhloSecureTrusted,
            }))
        }
    }

    fn check_mail(&self, s: &Settings, cmd: &Command<'_>) -> Result<(), ReplyId> {
        let Command::Mail(m) = cmd else {
            return Ok(());
        };
        if m.auth || s.security.require_tls {
            self.check_mail_security(s, m.auth)?;
        }
        if m.size.is_some_and(|n| n > s.max_message_size) {
            return Err(ReplyId::TooBig);
        }
        Ok(())
    }

    // LMTP and XCLIENT/XFORWARD sessions take a copy of the step of their
    // own, so the plain one saves no registers for what they add
    // (measured, callgrind: ~20 instructions per MAIL and per RCPT).
    fn proceed_mail(&mut self, s: &Settings, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        if self.lmtp.is_some() || self.told.is_some() {
            return self.proceed_mail_extras(s, cmd, cx);
        }
        self.mail::<false>(s, cmd, cx)
    }

    #[cold]
    #[inline(never)]
    fn proceed_mail_extras(
        &mut self,
        s: &Settings,
        cmd: &Command<'_>,
        cx: &mut Ctx<'_>,
    ) -> Option<Out> {
        self.mail::<true>(s, cmd, cx)
    }

    /// MAIL's proceed step; `X`: LMTP or XFORWARD may have a part in it.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn mail<const X: bool>(
        &mut self,
        s: &Settings,
        cmd: &Command<'_>,
        cx: &mut Ctx<'_>,
    ) -> Option<Out> {
        let Command::Mail(m) = cmd else {
            return Some(Out::Reply(ReplyId::SyntaxMail));
        };
        if s.max_transactions != 0 && self.transactions >= s.max_transactions {
            self.close(s, ReplyId::TooManyMessages, cx);
            return None;
        }
        self.transactions += 1;
        self.tx = Tx {
            started: Some(cx.now),
            smtputf8: m.smtputf8,
            body: m.body,
            ..Tx::default()
        };
        self.counts.transactions += 1;
        if X {
            self.mail_extras(cx);
        }
        cx.sink.mail(self.id, m.path);
        Some(Out::Reply(ReplyId::SenderOk))
    }

    /// MAIL's part in LMTP and behind XFORWARD, out of its hot path: the
    /// sink hears who the forwarded client is (just before the `mail` it
    /// is for); LMTP forgets the last transaction's recipients.
    #[cold]
    #[inline(never)]
    fn mail_extras(&mut self, cx: &mut Ctx<'_>) {
        if let Some(c) = self.told.as_deref().and_then(|t| t.forward.as_ref()) {
            cx.sink.client(self.id, c, true);
        }
        if let Some(l) = self.lmtp.as_deref_mut() {
            l.release();
        }
    }

    /// LMTP keeps each recipient's path where rules may answer it at the
    /// end of the data.
    #[cold]
    #[inline(never)]
    fn rcpt_lmtp(&mut self, path: &[u8], cx: &mut Ctx<'_>) {
        if let Some(l) = self
            .lmtp
            .as_deref_mut()
            .filter(|_| cx.asks & Stage::EndOfData.bit() != 0)
        {
            l.paths.extend_from_slice(path);
            l.ends.push(l.paths.len());
        }
    }

    fn check_rcpt(&self, s: &Settings, _: &Command<'_>) -> Result<(), ReplyId> {
        if self.tx.recipients >= s.max_recipients {
            Err(ReplyId::TooManyRecipients)
        } else {
            Ok(())
        }
    }

    fn proceed_rcpt(&mut self, s: &Settings, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        if self.lmtp.is_some() {
            return self.proceed_rcpt_lmtp(s, cmd, cx);
        }
        self.rcpt::<false>(cmd, cx)
    }

    #[cold]
    #[inline(never)]
    fn proceed_rcpt_lmtp(
        &mut self,
        _: &Settings,
        cmd: &Command<'_>,
        cx: &mut Ctx<'_>,
    ) -> Option<Out> {
        self.rcpt::<true>(cmd, cx)
    }

    /// RCPT's proceed step; `L`: an LMTP session.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn rcpt<const L: bool>(&mut self, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        let Command::Rcpt(r) = cmd else {
            return Some(Out::Reply(ReplyId::SyntaxRcpt));
        };
        self.tx.recipients += 1;
        self.counts.recipients += 1;
        if L {
            self.rcpt_lmtp(r.path, cx);
        }
        cx.sink.rcpt(self.id, r.path);
        Some(Out::Reply(ReplyId::RecipientOk))
    }

    fn check_data(&self, _: &Settings, _: &Command<'_>) -> Result<(), ReplyId> {
        if self.tx.body == Body::BinaryMime {
            // RFC 3030 3: BINARYMIME content cannot be sent with DATA.
            Err(ReplyId::BinarymimeNeedsBdat)
        } else {
            Ok(())
        }
    }

    fn proceed_data(&mut self, _: &Settings, _: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        if self.lmtp.is_some() {
            // Apart, as MAIL's and RCPT's (see `proceed_mail`).
            return self.proceed_data_lmtp(cx);
        }
        self.start_data(cx)
    }

    #[cold]
    #[inline(never)]
    fn proceed_data_lmtp(&mut self, cx: &mut Ctx<'_>) -> Option<Out> {
        self.decide_lmtp(cx);
        self.start_data(cx)
    }

    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn start_data(&mut self, cx: &mut Ctx<'_>) -> Option<Out> {
        cx.sink.begin(self.id);
        self.unstuffer = Unstuffer::new();
        self.enter(State::Data, cx);
        Some(Out::Reply(ReplyId::StartData))
    }

    /// The chunk follows the line; its reply comes once it has been read.
    fn proceed_bdat(&mut self, _: &Settings, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        let &Command::Bdat { size, last } = cmd else {
            return Some(Out::Reply(ReplyId::SyntaxBdat));
        };
        if !self.tx.bdat {
            self.tx.bdat = true;
            if self.lmtp.is_some() {
                self.decide_lmtp(cx);
            }
            cx.sink.begin(self.id);
        }
        self.read_chunk(size, last, None, cx);
        None
    }

    /// The next `size` octets are a BDAT chunk; `reject`: the reply that
    /// refuses it once read.
    fn read_chunk(&mut self, size: u64, last: bool, reject: Option<ReplyId>, cx: &mut Ctx<'_>) {
        let chunk = State::Chunk {
            size,
            remaining: size,
            last,
            reject,
        };
        self.enter(chunk, cx);
    }

    /// A refused BDAT still has its chunk consumed (RFC 3030 2), so the
    /// session stays in step; the refusal is the reply to the chunk.
    fn refuse_bdat(&mut self, r: ReplyId, cmd: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        let &Command::Bdat { size, last } = cmd else {
            return Some(Out::Reply(r));
        };
        self.read_chunk(size, last, Some(r), cx);
        None
    }

    fn proceed_rset(&mut self, _: &Settings, _: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        self.reset_tx(cx);
        Some(Out::Reply(ReplyId::Ok))
    }

    fn proceed_quit(&mut self, _: &Settings, _: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        self.reset_tx(cx);
        self.enter(State::Closed, cx);
        Some(Out::Reply(ReplyId::Bye))
    }

    /// The content is complete: was it acceptable?
    fn check_content(&self, _: &Settings, _: &Command<'_>) -> Result<(), ReplyId> {
        if self.tx.too_big {
            Err(ReplyId::TooBig)
        } else if self.tx.bare_lf {
            Err(ReplyId::BareLfInData)
        } else {
            Ok(())
        }
    }

    /// Asks the sink; a pending verdict parks the session.
    fn proceed_end(&mut self, _: &Settings, _: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        if self.tx.drop {
            return self.drop_message(cx);
        }
        match cx.sink.end(self.id) {
            Verdict::Pending => {
                // The wait for the sink is bounded by the idle timeout from now.
                self.last_active = cx.now;
                self.enter(State::Verdict, cx);
                None
            }
            verdict => {
                self.enter(State::Command, cx);
                Some(self.finish(verdict))
            }
        }
    }

    /// Accept-but-drop: the sink keeps nothing, the client hears 250.
    #[cold]
    #[inline(never)]
    fn drop_message(&mut self, cx: &mut Ctx<'_>) -> Option<Out> {
        cx.sink.abort(self.id);
        self.enter(State::Command, cx);
        Some(self.finish(Verdict::Accepted))
    }

    fn refuse_end(&mut self, r: ReplyId, _: &Command<'_>, cx: &mut Ctx<'_>) -> Option<Out> {
        cx.sink.abort(self.id);
        self.enter(State::Command, cx);
        Some(self.finish(Verdict::Rejected(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_verb_order_and_named() {
        assert_eq!(rows().len(), Verb::COUNT);
        for (i, r) in rows().iter().enumerate() {
            assert_eq!(r.verb, Verb::ALL[i]);
            assert_eq!(r.verb as usize, i);
            assert!(std::ptr::eq(row(r.verb), r));
            assert!(!r.name.is_empty());
        }
    }

    #[test]
    fn sequencing_follows_rfc_5321_and_3030() {
        use Phase::*;
        let refusal = |v, p| row(v).refusal(p);
        assert_eq!(refusal(Verb::Mail, Fresh), Some(ReplyId::NeedHelo));
        assert_eq!(refusal(Verb::Mail, Greeted), None);
        assert_eq!(refusal(Verb::Mail, Rcpt), Some(ReplyId::NestedMail));
        assert_eq!(refusal(Verb::Rcpt, Greeted), Some(ReplyId::NeedMail));
        assert_eq!(refusal(Verb::Rcpt, Chunking), Some(ReplyId::RcptAfterBdat));
        assert_eq!(refusal(Verb::Data, Mail), Some(ReplyId::NeedRcpt));
        assert_eq!(refusal(Verb::Data, Chunking), Some(ReplyId::DataAfterBdat));
        assert_eq!(refusal(Verb::Bdat, Chunking), None);
        for p in [Fresh, Greeted, Mail, Rcpt, Chunking] {
            for v in [Verb::Helo, Verb::Ehlo, Verb::Rset, Verb::Noop, Verb::Quit] {
                assert_eq!(refusal(v, p), None, "{v:?} in {p:?}");
            }
        }
    }
}
