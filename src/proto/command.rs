//! One command line -> a [`Command`] borrowing its arguments (RFC 5321 4.1).
//!
//! Owns: verb recognition and the argument grammar of every command,
//! including MAIL/RCPT paths and ESMTP parameters. Pure and allocation-free;
//! protocol errors are values that name the reply to send.

use super::address::{self, AddrError};
use super::reply::ReplyId;

/// A parsed command line. Arguments borrow from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `HELO domain`.
    Helo(&'a [u8]),
    /// `EHLO domain`.
    Ehlo(&'a [u8]),
    /// `LHLO domain` (LMTP, RFC 2033 4.1).
    Lhlo(&'a [u8]),
    /// `XCLIENT attribute=value ...` (Postfix): the attributes, unparsed.
    Xclient(&'a [u8]),
    /// `XFORWARD attribute=value ...` (Postfix): the attributes, unparsed.
    Xforward(&'a [u8]),
    /// `MAIL FROM:<path> [params]`.
    Mail(Mail<'a>),
    /// `RCPT TO:<path> [params]`.
    Rcpt(Rcpt<'a>),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Octets in the chunk that follows the line.
        size: u64,
        /// `LAST`: the chunk ends the message.
        last: bool,
    },
    /// A BDAT line with a usable size but a bad rest: the chunk is consumed,
    /// then refused. Without a usable size the session cannot find the next
    /// command and must close (`size: None`).
    BadBdat {
        /// The chunk size, when it could be read.
        size: Option<u64>,
    },
    /// `RSET`.
    Rset,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN string`.
    Expn,
    /// `HELP [string]`.
    Help,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism's name, as sent.
        mechanism: &'a [u8],
        /// The initial response (base64, or `=` for an empty one).
        initial: Option<&'a [u8]>,
    },
    /// Recognised but not implemented: RFC 821's SEND, SOML, SAML, TURN
    /// (withdrawn by RFC 5321 appendix F) and extensions we do not offer
    /// (ETRN, ATRN, BURL).
    Obsolete,
    /// The end of the message content: the `CRLF.CRLF` of DATA (`bdat:
    /// false`) or the end of the last BDAT chunk. Never parsed from a line:
    /// the session dispatches it when the content ends, so the end of data
    /// is a row of the verb table like any command (as in smtp-sink).
    EndOfContent {
        /// The content came in BDAT chunks.
        bdat: bool,
    },
}

impl Command<'_> {
    /// The verb-table row that handles this command.
    pub fn verb(&self) -> Verb {
        match self {
            Command::Helo(_) => Verb::Helo,
            Command::Ehlo(_) => Verb::Ehlo,
            Command::Lhlo(_) => Verb::Lhlo,
            Command::Xclient(_) => Verb::Xclient,
            Command::Xforward(_) => Verb::Xforward,
            Command::Mail(_) => Verb::Mail,
            Command::Rcpt(_) => Verb::Rcpt,
            Command::Data => Verb::Data,
            Command::Bdat { .. } | Command::BadBdat { .. } => Verb::Bdat,
            Command::Rset => Verb::Rset,
            Command::Vrfy => Verb::Vrfy,
            Command::Expn => Verb::Expn,
            Command::Help => Verb::Help,
            Command::Noop => Verb::Noop,
            Command::Quit => Verb::Quit,
            Command::StartTls => Verb::StartTls,
            Command::Auth { .. } => Verb::Auth,
            Command::Obsolete => Verb::NotImplemented,
            Command::EndOfContent { bdat: false } => Verb::EndOfData,
            Command::EndOfContent { bdat: true } => Verb::LastChunk,
        }
    }
}

/// The rows of the verb table (see `server::verbs`): every command, plus the
/// end of the content, which ends a transaction like a command would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `HELO`.
    Helo,
    /// `EHLO`.
    Ehlo,
    /// `MAIL`.
    Mail,
    /// `RCPT`.
    Rcpt,
    /// `DATA`.
    Data,
    /// `BDAT`, whatever its chunk.
    Bdat,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN string`.
    Expn,
    /// `HELP [string]`.
    Help,
    /// `QUIT`.
    Quit,
    /// `STARTTLS`.
    StartTls,
    /// `AUTH`.
    Auth,
    /// `LHLO` (LMTP's EHLO).
    Lhlo,
    /// `XCLIENT`.
    Xclient,
    /// `XFORWARD`.
    Xforward,
    /// SEND, SOML, SAML, TURN and extensions not offered.
    NotImplemented,
    /// `CRLF.CRLF` after DATA.
    EndOfData,
    /// The end of the last BDAT chunk (or of the chunk that made the message
    /// too big).
    LastChunk,
}

impl Verb {
    /// Every verb, in declaration order (`ALL[v as usize] == v`).
    pub const ALL: [Verb; 20] = [
        Verb::Helo,
        Verb::Ehlo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Help,
        Verb::Quit,
        Verb::StartTls,
        Verb::Auth,
        Verb::Lhlo,
        Verb::Xclient,
        Verb::Xforward,
        Verb::NotImplemented,
        Verb::EndOfData,
        Verb::LastChunk,
    ];
    /// How many verbs there are.
    pub const COUNT: usize = Self::ALL.len();
}

/// `MAIL FROM:<reverse-path> [params]`, parameters already checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mail<'a> {
    /// The path between the angle brackets (empty for the null path), with
    /// any source route removed.
    pub path: &'a [u8],
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152, RFC 3030).
    pub body: Body,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `AUTH=` (RFC 4954 5): accepted where AUTH is offered, else refused.
    pub auth: bool,
}

/// `RCPT TO:<forward-path> [params]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt<'a> {
    /// The path between the angle brackets.
    pub path: &'a [u8],
}

/// The BODY parameter (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// `7BIT`, the default.
    #[default]
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME`: BDAT only.
    BinaryMime,
}

/// What the session needs to know to parse an address-bearing command.
#[derive(Debug, Clone, Copy)]
pub struct ParseCtx {
    /// SMTPUTF8 was given on this transaction's MAIL (RCPT only).
    pub smtputf8: bool,
}

/// A four-letter verb folded to upper case as one number: `& 0xDF` clears
/// the case bit of a letter, and maps no other byte onto a letter, so only
/// the case variants of a verb compare equal to it.
const fn verb_key(v: [u8; 4]) -> u32 {
    u32::from_le_bytes(v) & 0xDFDF_DFDF
}

/// Parses one line (without CRLF). Errors are the reply to send.
pub fn parse(line: &[u8], ctx: ParseCtx) -> Result<Command<'_>, ReplyId> {
    const MAIL: u32 = verb_key(*b"MAIL");
    const RCPT: u32 = verb_key(*b"RCPT");
    const DATA: u32 = verb_key(*b"DATA");
    const BDAT: u32 = verb_key(*b"BDAT");
    const EHLO: u32 = verb_key(*b"EHLO");
    const HELO: u32 = verb_key(*b"HELO");
    const LHLO: u32 = verb_key(*b"LHLO");
    const RSET: u32 = verb_key(*b"RSET");
    const NOOP: u32 = verb_key(*b"NOOP");
    const QUIT: u32 = verb_key(*b"QUIT");
    const VRFY: u32 = verb_key(*b"VRFY");
    const EXPN: u32 = verb_key(*b"EXPN");
    const HELP: u32 = verb_key(*b"HELP");
    const AUTH: u32 = verb_key(*b"AUTH");
    // RFC 821's SEND, SOML, SAML, TURN and extensions we do not offer.
    const NOT_IMPLEMENTED: [u32; 7] = [
        verb_key(*b"SEND"),
        verb_key(*b"SOML"),
        verb_key(*b"SAML"),
        verb_key(*b"TURN"),
        verb_key(*b"ETRN"),
        verb_key(*b"ATRN"),
        verb_key(*b"BURL"),
    ];
    let (verb, args) = split_verb(line);
    let Ok(four) = <[u8; 4]>::try_from(verb) else {
        return long_verb(verb, args);
    };
    match verb_key(four) {
        MAIL => parse_mail(args).map(Command::Mail),
        RCPT => parse_rcpt(args, ctx).map(Command::Rcpt),
        DATA => no_args(args, Command::Data, ReplyId::SyntaxData),
        BDAT => Ok(parse_bdat(args)),
        EHLO => domain_arg(args, ReplyId::SyntaxEhlo).map(Command::Ehlo),
        HELO => domain_arg(args, ReplyId::SyntaxHelo).map(Command::Helo),
        LHLO => domain_arg(args, ReplyId::SyntaxLhlo).map(Command::Lhlo),
        RSET => no_args(args, Command::Rset, ReplyId::SyntaxRset),
        // NOOP may carry a string, which is ignored (RFC 5321 4.1.1.9).
        NOOP => Ok(Command::Noop),
        QUIT => no_args(args, Command::Quit, ReplyId::SyntaxQuit),
        VRFY if args.is_empty() => Err(ReplyId::SyntaxVrfy),
        VRFY => Ok(Command::Vrfy),
        EXPN => Ok(Command::Expn),
        HELP => Ok(Command::Help),
        AUTH => parse_auth(args),
        k if NOT_IMPLEMENTED.contains(&k) => Ok(Command::Obsolete),
        _ => Err(ReplyId::Unrecognized),
    }
}

/// A verb that is not four letters long: rare, so out of `parse`, whose
/// size decides whether MAIL's and RCPT's parsers are inlined into it
/// (measured, callgrind: ~60 instructions per message when they are not).
#[cold]
#[inline(never)]
fn long_verb<'a>(verb: &[u8], args: &'a [u8]) -> Result<Command<'a>, ReplyId> {
    if verb.eq_ignore_ascii_case(b"XCLIENT") {
        Ok(Command::Xclient(args))
    } else if verb.eq_ignore_ascii_case(b"XFORWARD") {
        Ok(Command::Xforward(args))
    } else if !verb.eq_ignore_ascii_case(b"STARTTLS") {
        // Known extension verbs we do not offer are "not implemented"
        // (RFC 5321 4.2.4), not unknown.
        Err(ReplyId::Unrecognized)
    } else if args.is_empty() {
        Ok(Command::StartTls)
    } else {
        // RFC 3207 4: no parameters.
        Err(ReplyId::SyntaxStartTls)
    }
}

/// Splits at the first space; trailing spaces are not part of the arguments.
fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    let line = trim_end(line);
    match memchr::memchr(b' ', line) {
        Some(sp) => (
            line.get(..sp).unwrap_or_default(),
            trim_start(line.get(sp + 1..).unwrap_or_default()),
        ),
        None => (line, &[]),
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b' ').count();
    s.get(n..).unwrap_or_default()
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|b| **b == b' ').count();
    s.get(..s.len() - n).unwrap_or_default()
}

fn no_args<'a>(args: &[u8], cmd: Command<'a>, err: ReplyId) -> Result<Command<'a>, ReplyId> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(err)
    }
}

/// HELO/EHLO take one domain or address literal. We check its shape loosely:
/// one token, no spaces (clients send all sorts of names; none is looked up).
fn domain_arg(args: &[u8], err: ReplyId) -> Result<&[u8], ReplyId> {
    if args.is_empty() || args.contains(&b' ') {
        Err(err)
    } else {
        Ok(args)
    }
}

fn parse_bdat(args: &[u8]) -> Command<'static> {
    let (size, rest) = match memchr::memchr(b' ', args) {
        Some(sp) => (
            args.get(..sp).unwrap_or_default(),
            trim_start(args.get(sp + 1..).unwrap_or_default()),
        ),
        None => (args, &[][..]),
    };
    let Some(size) = parse_decimal(size) else {
        return Command::BadBdat { size: None };
    };
    if rest.is_empty() {
        Command::Bdat { size, last: false }
    } else if rest.eq_ignore_ascii_case(b"LAST") {
        Command::Bdat { size, last: true }
    } else {
        Command::BadBdat { size: Some(size) }
    }
}

/// True for a line whose verb is BDAT: its chunk follows whatever we answer,
/// so a line we cannot execute means the connection has lost sync.
pub fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && line.get(4).is_none_or(|b| *b <= b' ' || *b == 0x7f)
}

/// RFC 1870 size-value = 1*20DIGIT; a valid value too big for u64 is
/// simply too big (552), not bad syntax.
fn parse_size(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(parse_decimal(s).unwrap_or(u64::MAX))
}

/// 1*DIGIT that fits in u64.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Strips `prefix` (case-insensitive, e.g. `FROM:`), then optional spaces
/// (a common client habit RFC 5321 does not allow but every MTA accepts),
/// then the bracketed path. Returns the text inside the brackets and the
/// parameter string after it.
fn path_and_params<'a>(args: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    // `| 0x20` folds letters to lower case; the other bytes of a command
    // line (controls were refused before parsing) do not fold onto the
    // prefix's letters or its colon.
    let head = args.get(..prefix.len())?;
    if !head.iter().zip(prefix).all(|(a, p)| a | 0x20 == p | 0x20) {
        return None;
    }
    let rest = trim_start(args.get(prefix.len()..)?);
    let inner = rest.strip_prefix(b"<")?;
    let close = address::closing_bracket(inner)?;
    let path = inner.get(..close)?;
    let after = inner.get(close + 1..)?;
    match after {
        [] => Some((path, after)),
        [b' ', params @ ..] => Some((path, trim_start(params))),
        _ => None,
    }
}

/// Iterates `KEYWORD[=VALUE]` parameters separated by spaces (RFC 5321 4.1.2).
fn params(s: &[u8]) -> impl Iterator<Item = Result<(&[u8], Option<&[u8]>), ReplyId>> {
    s.split(|b| *b == b' ').filter(|p| !p.is_empty()).map(|p| {
        let (key, value) = match memchr::memchr(b'=', p) {
            Some(eq) => (p.get(..eq).unwrap_or_default(), p.get(eq + 1..)),
            None => (p, None),
        };
        let key_ok = key.first().is_some_and(u8::is_ascii_alphanumeric)
            && key.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-');
        // esmtp-value: 1*(%d33-60 / %d62-126), UTF-8 allowed by RFC 6531.
        let value_ok = value.is_none_or(|v| {
            !v.is_empty()
                && v.iter()
                    .all(|b| (33..=126).contains(b) && *b != b'=' || *b >= 0x80)
        });
        if key_ok && value_ok {
            Ok((key, value))
        } else {
            Err(ReplyId::BadParamSyntax)
        }
    })
}

fn parse_mail(args: &[u8]) -> Result<Mail<'_>, ReplyId> {
    let (path, rest) = path_and_params(args, b"FROM:").ok_or(ReplyId::SyntaxMail)?;
    let mut mail = Mail::default();
    // SIZE, BODY and SMTPUTF8 may be repeated, the last one counting: real
    // clients repeat them (Python's send_message adds SMTPUTF8 and
    // BODY=8BITMIME again when the caller already gave them). RFC 3461 4
    // allows RET and ENVID once each.
    let (mut seen_ret, mut seen_envid) = (false, false);
    for p in params(rest) {
        let (key, value) = p?;
        if key.eq_ignore_ascii_case(b"SIZE") {
            mail.size = Some(value.and_then(parse_size).ok_or(ReplyId::BadParamSyntax)?);
        } else if key.eq_ignore_ascii_case(b"BODY") {
            let v = value.ok_or(ReplyId::BadParamSyntax)?;
            mail.body = if v.eq_ignore_ascii_case(b"7BIT") {
                Body::SevenBit
            } else if v.eq_ignore_ascii_case(b"8BITMIME") {
                Body::EightBitMime
            } else if v.eq_ignore_ascii_case(b"BINARYMIME") {
                Body::BinaryMime
            } else {
                return Err(ReplyId::BadParamSyntax);
            };
        } else if key.eq_ignore_ascii_case(b"SMTPUTF8") {
            if value.is_some() {
                return Err(ReplyId::BadParamSyntax);
            }
            mail.smtputf8 = true;
        } else if key.eq_ignore_ascii_case(b"RET") {
            // RFC 3461 4.3: RET=FULL / RET=HDRS.
            let v = value.ok_or(ReplyId::BadParamSyntax)?;
            if !(v.eq_ignore_ascii_case(b"FULL") || v.eq_ignore_ascii_case(b"HDRS"))
                || std::mem::replace(&mut seen_ret, true)
            {
                return Err(ReplyId::BadParamSyntax);
            }
        } else if key.eq_ignore_ascii_case(b"AUTH") {
            // RFC 4954 5: AUTH=<> or AUTH=xtext (an addr-spec).
            let v = value.ok_or(ReplyId::BadParamSyntax)?;
            if !(v == b"<>" || !v.is_empty() && is_xtext(v))
                || std::mem::replace(&mut mail.auth, true)
            {
                return Err(ReplyId::BadParamSyntax);
            }
        } else if key.eq_ignore_ascii_case(b"ENVID") {
            // RFC 3461 4.4: xtext, at most 100 characters.
            let v = value.ok_or(ReplyId::BadParamSyntax)?;
            if v.len() > 100 || !is_xtext(v) || std::mem::replace(&mut seen_envid, true) {
                return Err(ReplyId::BadParamSyntax);
            }
        } else {
            return Err(ReplyId::UnsupportedMailParam);
        }
    }
    if !path.is_empty() {
        mail.path = address::check_path(path, mail.smtputf8).map_err(|e| match e {
            AddrError::Syntax => ReplyId::BadSender,
            AddrError::NeedsUtf8 => ReplyId::NeedsSmtputf8,
            AddrError::TooLong => ReplyId::SenderTooLong,
        })?;
    }
    Ok(mail)
}

/// `AUTH mechanism [initial-response]` (RFC 4954 4): a mechanism name is
/// 1-20 of A-Z, 0-9, `-`, `_`; the response is base64 or `=`.
fn parse_auth(args: &[u8]) -> Result<Command<'_>, ReplyId> {
    let (mechanism, rest) = match memchr::memchr(b' ', args) {
        Some(sp) => (
            args.get(..sp).unwrap_or_default(),
            Some(trim_start(args.get(sp + 1..).unwrap_or_default())),
        ),
        None => (args, None),
    };
    let name_ok = (1..=20).contains(&mechanism.len())
        && mechanism
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    if !name_ok {
        return Err(ReplyId::SyntaxAuth);
    }
    match rest {
        Some(r) if r.is_empty() || r.contains(&b' ') => Err(ReplyId::SyntaxAuth),
        initial => Ok(Command::Auth { mechanism, initial }),
    }
}

fn parse_rcpt(args: &[u8], ctx: ParseCtx) -> Result<Rcpt<'_>, ReplyId> {
    let (path, rest) = path_and_params(args, b"TO:").ok_or(ReplyId::SyntaxRcpt)?;
    // RFC 3461 4: NOTIFY and ORCPT may each appear once.
    let (mut notify, mut orcpt) = (false, false);
    for p in params(rest) {
        let (key, value) = p?;
        let known = key.eq_ignore_ascii_case(b"NOTIFY") || key.eq_ignore_ascii_case(b"ORCPT");
        if !known {
            return Err(ReplyId::UnsupportedRcptParam);
        }
        let v = value.ok_or(ReplyId::BadParamSyntax)?;
        if key.eq_ignore_ascii_case(b"NOTIFY") {
            if std::mem::replace(&mut notify, true) {
                return Err(ReplyId::BadParamSyntax);
            }
            // RFC 3461 4.1: NEVER alone, or a list of SUCCESS, FAILURE, DELAY.
            let never = v.eq_ignore_ascii_case(b"NEVER");
            let list_ok = v.split(|b| *b == b',').all(|w| {
                w.eq_ignore_ascii_case(b"SUCCESS")
                    || w.eq_ignore_ascii_case(b"FAILURE")
                    || w.eq_ignore_ascii_case(b"DELAY")
            });
            if !(never || list_ok) {
                return Err(ReplyId::BadParamSyntax);
            }
        } else {
            if std::mem::replace(&mut orcpt, true) {
                return Err(ReplyId::BadParamSyntax);
            }
            // RFC 3461 4.2: addr-type ";" xtext.
            let ok = memchr::memchr(b';', v).is_some_and(|semi| {
                let (ty, addr) = v.split_at(semi);
                !ty.is_empty()
                    && ty.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                    && addr.len() > 1
                    && (is_xtext(addr.get(1..).unwrap_or_default()) || ctx.smtputf8)
            });
            if !ok {
                return Err(ReplyId::BadParamSyntax);
            }
        }
    }
    // RFC 5321 4.1.1.3: <Postmaster> needs no domain.
    if path.eq_ignore_ascii_case(b"Postmaster") {
        return Ok(Rcpt { path });
    }
    let path = address::check_path(path, ctx.smtputf8).map_err(|e| match e {
        AddrError::Syntax => ReplyId::BadRecipient,
        AddrError::NeedsUtf8 => ReplyId::NeedsSmtputf8,
        AddrError::TooLong => ReplyId::RecipientTooLong,
    })?;
    Ok(Rcpt { path })
}

/// xtext (RFC 3461 4): printable ASCII but `+` and `=`, or `+HH`. RFC 3461
/// asks for upper-case hex; lower case is accepted, as Postfix does.
fn is_xtext(v: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = v.get(i) {
        if b == b'+' {
            let hex = |j: usize| v.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if (33..=126).contains(&b) && b != b'=' {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: ParseCtx = ParseCtx { smtputf8: false };

    fn p(line: &str) -> Result<Command<'_>, ReplyId> {
        parse(line.as_bytes(), CTX)
    }

    #[test]
    fn path_prefixes_match_only_case_variants() {
        // Every byte a command line can hold (controls are refused before
        // parsing), at every position of each prefix.
        for prefix in [&b"FROM:"[..], b"TO:"] {
            for pos in 0..prefix.len() {
                for b in (0x20..=0x7e).chain(0x80..=0xff) {
                    let mut arg = prefix.to_vec();
                    arg[pos] = b;
                    arg.extend_from_slice(b"<a@b>");
                    let want = arg[..prefix.len()].eq_ignore_ascii_case(prefix);
                    assert_eq!(
                        path_and_params(&arg, prefix).is_some(),
                        want,
                        "{:?}",
                        String::from_utf8_lossy(&arg)
                    );
                }
            }
        }
    }

    #[test]
    fn verb_keys_match_only_case_variants() {
        let mail = verb_key(*b"MAIL");
        for b in 0..=255u8 {
            for pos in 0..4 {
                let mut v = *b"MAIL";
                v[pos] = b;
                let same = b.eq_ignore_ascii_case(&b"MAIL"[pos]);
                assert_eq!(verb_key(v) == mail, same, "byte {b:#x} at {pos}");
            }
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(p("noop"), Ok(Command::Noop));
        assert_eq!(p("NoOp whatever"), Ok(Command::Noop));
        assert_eq!(p("dAtA"), Ok(Command::Data));
        assert_eq!(p("QUIT "), Ok(Command::Quit));
        assert_eq!(
            p("ehlo client.example"),
            Ok(Command::Ehlo(b"client.example"))
        );
        for v in [
            "SEND FROM:<a@b>",
            "soml FROM:<a@b>",
            "SAML FROM:<a@b>",
            "TURN",
        ] {
            assert_eq!(p(v), Ok(Command::Obsolete), "{v}");
        }
        assert_eq!(p("starttls"), Ok(Command::StartTls));
        assert_eq!(p("STARTTLS x"), Err(ReplyId::SyntaxStartTls));
        assert_eq!(
            p("AUTH PLAIN"),
            Ok(Command::Auth {
                mechanism: b"PLAIN",
                initial: None
            })
        );
        assert_eq!(
            p("auth plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: b"plain",
                initial: Some(b"AGEAYg==")
            })
        );
        assert_eq!(
            p("AUTH LOGIN ="),
            Ok(Command::Auth {
                mechanism: b"LOGIN",
                initial: Some(b"=")
            })
        );
        for bad in [
            "AUTH",
            "AUTH PL@IN",
            "AUTH PLAIN a b",
            "AUTH ABCDEFGHIJKLMNOPQRSTU",
        ] {
            assert_eq!(p(bad), Err(ReplyId::SyntaxAuth), "{bad}");
        }
        let mail = |l: &str| match p(l) {
            Ok(Command::Mail(m)) => Ok(m.auth),
            Ok(_) => Err(ReplyId::Unrecognized),
            Err(e) => Err(e),
        };
        assert_eq!(mail("MAIL FROM:<a@b> AUTH=<>"), Ok(true));
        assert_eq!(mail("MAIL FROM:<a@b> AUTH=a+2Bb@c"), Ok(true));
        assert_eq!(mail("MAIL FROM:<a@b>"), Ok(false));
        assert_eq!(mail("MAIL FROM:<a@b> AUTH"), Err(ReplyId::BadParamSyntax));
        assert_eq!(
            mail("MAIL FROM:<a@b> AUTH=<> AUTH=<>"),
            Err(ReplyId::BadParamSyntax)
        );
        assert_eq!(p("FOO"), Err(ReplyId::Unrecognized));
        assert_eq!(p(""), Err(ReplyId::Unrecognized));
        assert_eq!(p("MAILX FROM:<>"), Err(ReplyId::Unrecognized));
    }

    #[test]
    fn argument_syntax() {
        assert_eq!(p("DATA x"), Err(ReplyId::SyntaxData));
        assert_eq!(p("RSET x"), Err(ReplyId::SyntaxRset));
        assert_eq!(p("EHLO"), Err(ReplyId::SyntaxEhlo));
        assert_eq!(p("HELO a b"), Err(ReplyId::SyntaxHelo));
        assert_eq!(p("VRFY"), Err(ReplyId::SyntaxVrfy));
        assert_eq!(
            p("BDAT 10"),
            Ok(Command::Bdat {
                size: 10,
                last: false
            })
        );
        assert_eq!(
            p("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(p("BDAT"), Ok(Command::BadBdat { size: None }));
        assert_eq!(p("BDAT -1"), Ok(Command::BadBdat { size: None }));
        assert_eq!(p("BDAT 1 FIRST"), Ok(Command::BadBdat { size: Some(1) }));
        assert_eq!(
            p("BDAT 99999999999999999999999"),
            Ok(Command::BadBdat { size: None })
        );
        assert!(
            is_bdat(b"BDAT 5") && is_bdat(b"bdat") && is_bdat(b"bdat\t5") && !is_bdat(b"BDATX 5")
        );
    }

    #[test]
    fn mail_paths_and_params() {
        let m = |s: &str| match p(s) {
            Ok(Command::Mail(m)) => Ok((
                String::from_utf8(m.path.to_vec()).unwrap(),
                m.size,
                m.body,
                m.smtputf8,
            )),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(
            m("MAIL FROM:<>"),
            Ok((String::new(), None, Body::SevenBit, false))
        );
        assert_eq!(
            m("mail from:<a@b.example>"),
            Ok(("a@b.example".into(), None, Body::SevenBit, false))
        );
        assert_eq!(
            m("MAIL FROM: <a@b>"),
            Ok(("a@b".into(), None, Body::SevenBit, false))
        );
        assert_eq!(
            m("MAIL FROM:<@r1,@r2:a@b>"),
            Ok(("a@b".into(), None, Body::SevenBit, false))
        );
        assert_eq!(
            m("MAIL FROM:<\"a b>c\"@d>"),
            Ok(("\"a b>c\"@d".into(), None, Body::SevenBit, false))
        );
        assert_eq!(
            m("MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=x+2By"),
            Ok(("a@b".into(), Some(1000), Body::EightBitMime, false))
        );
        assert_eq!(
            m("MAIL FROM:<ä@b> SMTPUTF8"),
            Ok(("ä@b".into(), None, Body::SevenBit, true))
        );
        assert_eq!(m("MAIL FROM:<ä@b>"), Err(ReplyId::NeedsSmtputf8));
        assert_eq!(
            m("MAIL FROM:<a@b> FOO=1"),
            Err(ReplyId::UnsupportedMailParam)
        );
        assert_eq!(m("MAIL FROM:<a@b> SIZE=x"), Err(ReplyId::BadParamSyntax));
        // 1*20DIGIT is valid syntax even past u64: merely too big (RFC 1870 3).
        assert_eq!(
            m("MAIL FROM:<a@b> SIZE=99999999999999999999"),
            Ok(("a@b".into(), Some(u64::MAX), Body::SevenBit, false))
        );
        assert_eq!(
            m("MAIL FROM:<a@b> SIZE=999999999999999999999"),
            Err(ReplyId::BadParamSyntax)
        );
        assert_eq!(
            m("MAIL FROM:<a@b> RET=FULL RET=HDRS"),
            Err(ReplyId::BadParamSyntax)
        );
        assert_eq!(
            m(&format!("MAIL FROM:<{}@b>", "a".repeat(65))),
            Err(ReplyId::SenderTooLong)
        );
        assert_eq!(
            m("MAIL FROM:<a@b> SIZE=1 SIZE=2"),
            Ok(("a@b".into(), Some(2), Body::SevenBit, false))
        );
        assert_eq!(m("MAIL FROM:<a@b> BODY=9BIT"), Err(ReplyId::BadParamSyntax));
        assert_eq!(m("MAIL FROM:<a@b> RET=ALL"), Err(ReplyId::BadParamSyntax));
        assert_eq!(
            m("MAIL FROM:<a@b> SMTPUTF8=yes"),
            Err(ReplyId::BadParamSyntax)
        );
        assert_eq!(m("MAIL FROM:a@b"), Err(ReplyId::SyntaxMail));
        assert_eq!(m("MAIL TO:<a@b>"), Err(ReplyId::SyntaxMail));
        assert_eq!(m("MAIL FROM:<a@b"), Err(ReplyId::SyntaxMail));
        assert_eq!(m("MAIL FROM:<a@b>x"), Err(ReplyId::SyntaxMail));
        assert_eq!(m("MAIL"), Err(ReplyId::SyntaxMail));
        assert_eq!(m("MAIL FROM:<a>"), Err(ReplyId::BadSender));
        assert_eq!(m("MAIL FROM:<a..b@c>"), Err(ReplyId::BadSender));
        assert_eq!(
            m("MAIL FROM:<a@[127.0.0.1]>"),
            Ok(("a@[127.0.0.1]".into(), None, Body::SevenBit, false))
        );
        assert_eq!(
            m("MAIL FROM:<a@[IPv6:::1]>"),
            Ok(("a@[IPv6:::1]".into(), None, Body::SevenBit, false))
        );
        assert_eq!(m("MAIL FROM:<a@[300.0.0.1]>"), Err(ReplyId::BadSender));
    }

    #[test]
    fn rcpt_paths_and_params() {
        let unknown = parse(b"RCPT TO:<a@b> FOO", CTX);
        assert_eq!(unknown, Err(ReplyId::UnsupportedRcptParam));
        let twice = parse(b"RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=DELAY", CTX);
        assert_eq!(twice, Err(ReplyId::BadParamSyntax));
        let long = format!("RCPT TO:<{}@b>", "a".repeat(65));
        assert_eq!(parse(long.as_bytes(), CTX), Err(ReplyId::RecipientTooLong));
        assert!(parse(b"RCPT TO:<a@b> ORCPT=rfc822;a+2bb", CTX).is_ok());
        let r = |s: &str, utf8: bool| match parse(s.as_bytes(), ParseCtx { smtputf8: utf8 }) {
            Ok(Command::Rcpt(r)) => Ok(String::from_utf8(r.path.to_vec()).unwrap()),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(r("RCPT TO:<postmaster>", false), Ok("postmaster".into()));
        assert_eq!(
            r("RCPT TO:<Postmaster@x.example>", false),
            Ok("Postmaster@x.example".into())
        );
        assert_eq!(r("RCPT TO:<>", false), Err(ReplyId::BadRecipient));
        assert_eq!(
            r(
                "RCPT TO:<a@b> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b",
                false
            ),
            Ok("a@b".into())
        );
        assert_eq!(r("RCPT TO:<a@b> NOTIFY=NEVER", false), Ok("a@b".into()));
        assert_eq!(
            r("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", false),
            Err(ReplyId::BadParamSyntax)
        );
        assert_eq!(
            r("RCPT TO:<a@b> ORCPT=rfc822", false),
            Err(ReplyId::BadParamSyntax)
        );
        assert_eq!(
            r("RCPT TO:<a@b> SIZE=1", false),
            Err(ReplyId::UnsupportedRcptParam)
        );
        assert_eq!(
            r("RCPT TO:<δ@ε.example>", false),
            Err(ReplyId::NeedsSmtputf8)
        );
        assert_eq!(r("RCPT TO:<δ@ε.example>", true), Ok("δ@ε.example".into()));
        assert_eq!(r("RCPT FROM:<a@b>", false), Err(ReplyId::SyntaxRcpt));
    }
}
