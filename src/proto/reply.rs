//! Reply texts (RFC 5321 4.2, RFC 3463 enhanced status codes, RFC 2034), and
//! the reply parser clients use.
//!
//! Owns: the name of every reply the server can send ([`ReplyId`]) and the
//! table of their texts ([`Replies`]), rendered once per server from the
//! settings: the host name goes in at start, any text can be replaced before
//! the server runs, and the hot path only copies bytes (no formatting, no
//! allocation per reply). Every reply but the greeting, HELO/EHLO and the 354
//! intermediate reply carries an enhanced code (RFC 3463 defines classes 2, 4
//! and 5 only, so 354 cannot carry one).
//!
//! The EHLO block is rendered twice, for a session before and after it is
//! secured: extensions such as STARTTLS are offered only on one side.

use super::decimal;
use std::fmt;

/// Declares [`ReplyId`] and the default text of each reply. `{host}` is
/// replaced by the server's host name when the table is rendered.
macro_rules! replies {
    ($($(#[$doc:meta])* $id:ident = $text:literal;)*) => {
        /// Names every reply the server sends; [`Replies`] holds their texts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ReplyId {
            $(
                $(#[$doc])*
                #[doc = concat!("\n\nDefault text: `", $text, "`")]
                $id,
            )*
        }

        impl ReplyId {
            /// Every reply, in declaration order (`ALL[id as usize] == id`).
            pub const ALL: &'static [ReplyId] = &[$(ReplyId::$id,)*];

            /// The built-in text, before the host name is filled in.
            pub const fn default_text(self) -> &'static str {
                match self {
                    $(ReplyId::$id => $text,)*
                }
            }

            /// Each reply's code, in declaration order. Fixed: a text may
            /// be replaced ([`Replies::set`]) but not its code, so counting
            /// by id is counting by code.
            pub const CODES: &'static [u16] = &[$(code_of($text),)*];
        }
    };
}

replies! {
    /// The 220 greeting.
    Greeting = "220 {host} ESMTP smtpsink";
    /// The reply to HELO.
    Helo = "250 {host}";
    /// The reply to EHLO: the extension block, before TLS.
    Ehlo = "250 {host}";
    /// The extension block once the session is secured (RFC 3207 4.2).
    EhloSecure = "250 {host}";
    /// The extension block for a `--trusted` client (XCLIENT, XFORWARD are
    /// offered only to those, as Postfix does), before TLS.
    EhloTrusted = "250 {host}";
    /// The same once secured.
    EhloSecureTrusted = "250 {host}";
    /// The 220 greeting of an LMTP listener (RFC 2033 4).
    GreetingLmtp = "220 {host} LMTP smtpsink";
    Ok = "250 2.0.0 Ok";
    SenderOk = "250 2.1.0 Ok";
    RecipientOk = "250 2.1.5 Ok";
    /// The final reply to an accepted message.
    Queued = "250 2.0.0 Ok: queued";
    /// One BDAT chunk taken; `{size}` becomes its octet count.
    ChunkReceived = "250 2.0.0 {size} octets received";
    StartData = "354 End data with <CR><LF>.<CR><LF>";
    Vrfy = "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery";
    Help = "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET VRFY EXPN HELP NOOP QUIT";
    Bye = "221 2.0.0 Bye";

    Unrecognized = "500 5.5.2 Error: command not recognized";
    LineTooLong = "500 5.5.2 Error: line too long";
    BareLf = "500 5.5.2 Error: bare <LF> received; end lines with <CR><LF>";
    BadChar = "500 5.5.2 Error: control character in command";
    NotImplemented = "502 5.5.1 Error: command not implemented";

    SyntaxHelo = "501 5.5.4 Syntax: HELO hostname";
    SyntaxEhlo = "501 5.5.4 Syntax: EHLO hostname";
    SyntaxLhlo = "501 5.5.4 Syntax: LHLO hostname";
    /// XCLIENT or XFORWARD without attributes, or one malformed.
    SyntaxXclient = "501 5.5.4 Syntax: XCLIENT attribute=value ...";
    SyntaxXforward = "501 5.5.4 Syntax: XFORWARD attribute=value ...";
    /// An attribute name XCLIENT/XFORWARD does not know (Postfix's text,
    /// less the name).
    BadXclientAttribute = "501 5.5.4 Bad XCLIENT attribute name";
    BadXforwardAttribute = "501 5.5.4 Bad XFORWARD attribute name";
    /// XCLIENT or XFORWARD from a client outside --trusted (Postfix's text).
    NotAuthorized = "550 5.7.0 Error: insufficient authorization";
    SyntaxMail = "501 5.5.4 Syntax: MAIL FROM:<address>";
    SyntaxRcpt = "501 5.5.4 Syntax: RCPT TO:<address>";
    SyntaxData = "501 5.5.4 Syntax: DATA";
    SyntaxBdat = "501 5.5.4 Syntax: BDAT size [LAST]";
    SyntaxRset = "501 5.5.4 Syntax: RSET";
    SyntaxQuit = "501 5.5.4 Syntax: QUIT";
    SyntaxVrfy = "501 5.5.4 Syntax: VRFY address";
    BadSender = "501 5.1.7 Bad sender address syntax";
    BadRecipient = "501 5.1.3 Bad recipient address syntax";
    SenderTooLong = "501 5.1.7 Error: sender path too long";
    RecipientTooLong = "501 5.1.3 Error: recipient path too long";
    BadParamSyntax = "501 5.5.4 Error: bad parameter syntax";
    NeedsSmtputf8 = "553 5.6.7 Error: non-ASCII address requires SMTPUTF8";
    UnsupportedMailParam = "555 5.5.4 Error: unsupported MAIL parameter";
    UnsupportedRcptParam = "555 5.5.4 Error: unsupported RCPT parameter";

    SyntaxStartTls = "501 5.5.4 Syntax: STARTTLS";
    SyntaxAuth = "501 5.5.4 Syntax: AUTH mechanism [initial-response]";

    /// STARTTLS taken: the handshake comes next (RFC 3207 4).
    ReadyTls = "220 2.0.0 Ready to start TLS";
    /// STARTTLS where TLS cannot be offered (RFC 3207 4).
    TlsUnavailable = "454 4.7.0 TLS not available due to temporary reason";
    /// STARTTLS on a session already secured (no longer advertised).
    TlsActive = "503 5.5.1 Error: TLS already active";
    /// `--require-tls`: MAIL before STARTTLS (RFC 3207 4).
    TlsRequired = "530 5.7.0 Must issue a STARTTLS command first";
    /// An AUTH exchange's continuation; the challenge is filled in per step.
    AuthChallenge = "334 ";
    /// AUTH succeeded (RFC 4954 6).
    AuthOk = "235 2.7.0 Authentication successful";
    /// Wrong credentials (RFC 4954 6).
    AuthFailed = "535 5.7.8 Error: authentication failed: credentials invalid";
    /// The client sent `*` (RFC 4954 4).
    AuthCancelled = "501 5.7.0 Error: authentication cancelled";
    /// A response that is not base64, or not what the mechanism needs.
    AuthBadResponse = "501 5.5.2 Error: cannot decode authentication response";
    /// A mechanism not offered (RFC 4954 4).
    AuthUnknownMechanism = "504 5.5.4 Error: unrecognized authentication mechanism";
    /// AUTH on a session that already authenticated (RFC 4954 4).
    AuthAgain = "503 5.5.1 Error: already authenticated";
    /// AUTH (RFC 4954 4) or STARTTLS inside a mail transaction.
    InTransaction = "503 5.5.1 Error: MAIL transaction in progress";
    /// AUTH over plaintext where it is offered only after STARTTLS
    /// (RFC 4954 6).
    AuthNeedsTls = "538 5.7.11 Encryption required for requested authentication mechanism";

    NeedHelo = "503 5.5.1 Error: send HELO/EHLO first";
    NestedMail = "503 5.5.1 Error: nested MAIL command";
    NeedMail = "503 5.5.1 Error: need MAIL command";
    NeedRcpt = "503 5.5.1 Error: need RCPT command";
    DataAfterBdat = "503 5.5.1 Error: DATA not allowed after BDAT";
    BinarymimeNeedsBdat = "503 5.5.1 Error: BODY=BINARYMIME requires BDAT";
    RcptAfterBdat = "503 5.5.1 Error: RCPT after BDAT";
    /// Closes the connection: after a BDAT line we cannot execute we cannot
    /// tell chunk bytes from commands (Postfix answers the same way).
    BdatDesync = "521 5.5.4 Error: unusable BDAT command; closing connection";

    TooManyRecipients = "452 4.5.3 Error: too many recipients";
    TooBig = "552 5.3.4 Error: message size exceeds fixed limit";
    BareLfInData = "550 5.5.2 Error: bare <LF> received in message data";
    /// For sinks that fail to keep a message (RFC 3463 4.3.0).
    LocalError = "451 4.3.0 Error: local error in processing";
    /// For sinks out of space (RFC 3463 4.3.1).
    InsufficientStorage = "452 4.3.1 Error: insufficient system storage";

    /// Graceful shutdown.
    Shutdown = "421 4.3.2 {host} Service shutting down, closing transmission channel";
    /// No input for `--timeout`, or a command line not complete within `--command-timeout`.
    Timeout = "421 4.4.2 {host} Error: timeout exceeded, closing transmission channel";
    /// Message content slower than `--data-min-rate` over a `--data-window`.
    DataTooSlow = "421 4.4.2 {host} Error: data transfer too slow, closing transmission channel";
    /// `--max-errors` 4xx/5xx replies in one session.
    TooManyErrors = "421 4.7.0 {host} Error: too many errors, closing transmission channel";
    /// `--max-messages-per-connection` transactions in one session.
    TooManyMessages = "421 4.7.0 {host} Error: too many messages in one session, closing transmission channel";
    /// Any command but QUIT after a greeting that refused service (RFC 5321 3.1).
    ServiceRefused = "503 5.5.1 Error: no service on this connection; send QUIT";
    /// `--max-connections-per-client` reached.
    TooManyConnections = "421 4.7.0 {host} Error: too many connections from your address";
}

impl ReplyId {
    /// How many replies there are.
    pub const COUNT: usize = Self::ALL.len();

    /// Bit `i` set: reply `i` is a 4xx or 5xx.
    pub const ERRORS: u128 = error_mask(Self::CODES, 0);

    /// This reply's code.
    #[inline]
    pub fn code(self) -> u16 {
        Self::CODES.get(self as usize).copied().unwrap_or(0)
    }
}

/// Bit `i` for each code from the `i`th on that is 4xx or 5xx.
const fn error_mask(codes: &[u16], i: u32) -> u128 {
    match codes {
        [first, rest @ ..] if i < 128 => {
            let bit = if *first >= 400 { 1u128 << i } else { 0 };
            bit | error_mask(rest, i + 1)
        }
        _ => 0,
    }
}

/// The code at the start of a reply text (0 if there is none).
const fn code_of(text: &str) -> u16 {
    match text.as_bytes() {
        [a @ b'0'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16
        }
        _ => 0,
    }
}

/// How an extension is offered in the EHLO block (RFC 3207: STARTTLS only
/// before TLS; some sites offer AUTH only after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// In both blocks.
    Always,
    /// Only before the session is secured.
    BeforeTls,
    /// Only after.
    AfterTls,
    /// Only to `--trusted` clients, before TLS and after.
    Trusted,
}

/// The ESMTP extensions smtpsink offers, in EHLO order; `SIZE` advertises
/// `max_message_size`.
pub fn extensions(max_message_size: u64) -> Vec<(String, Offer)> {
    [
        "PIPELINING".to_string(),
        format!("SIZE {max_message_size}"),
        "8BITMIME".into(),
        "ENHANCEDSTATUSCODES".into(),
        "SMTPUTF8".into(),
        "CHUNKING".into(),
        "BINARYMIME".into(),
        "DSN".into(),
        "HELP".into(),
    ]
    .into_iter()
    .map(|k| (k, Offer::Always))
    .collect()
}

/// A reply text that is not one well-formed SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReply(pub String);

impl fmt::Display for BadReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a valid SMTP reply: {:?}", self.0)
    }
}

impl std::error::Error for BadReply {}

/// The text of every reply, rendered once per server. Texts are complete
/// replies, CRLF included; multi-line replies are allowed.
#[derive(Debug, Clone)]
pub struct Replies {
    /// Indexed by `ReplyId as usize`.
    texts: Box<[Box<[u8]>; ReplyId::COUNT]>,
    /// Where the octet count goes in [`ReplyId::ChunkReceived`].
    chunk_split: usize,
}

impl Replies {
    /// Renders the default texts for `hostname` and an EHLO block of the
    /// given extensions (keyword and parameters, e.g. `SIZE 1000`).
    pub fn new(hostname: &str, extensions: &[(String, Offer)]) -> Self {
        let texts = Box::new(std::array::from_fn(|i| {
            let text = ReplyId::ALL.get(i).map_or("", |id| id.default_text());
            crlf(&text.replace("{host}", hostname))
        }));
        let mut r = Self {
            texts,
            chunk_split: 0,
        };
        r.render_ehlo(hostname, extensions);
        r.chunk_split = r.find_chunk_split();
        r
    }

    /// Renders the four EHLO blocks (before and after TLS, for a trusted
    /// client or not) for `extensions`.
    pub fn render_ehlo(&mut self, hostname: &str, extensions: &[(String, Offer)]) {
        let block = |secure: bool, trusted: bool| -> Box<[u8]> {
            let mut lines = vec![hostname];
            lines.extend(extensions.iter().filter_map(|(kw, offer)| {
                let shown = match offer {
                    Offer::Always => true,
                    Offer::BeforeTls => !secure,
                    Offer::AfterTls => secure,
                    Offer::Trusted => trusted,
                };
                shown.then_some(kw.as_str())
            }));
            let mut out = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                out.extend_from_slice(if i + 1 == lines.len() {
                    b"250 "
                } else {
                    b"250-"
                });
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.into_boxed_slice()
        };
        for (id, secure, trusted) in [
            (ReplyId::Ehlo, false, false),
            (ReplyId::EhloSecure, true, false),
            (ReplyId::EhloTrusted, false, true),
            (ReplyId::EhloSecureTrusted, true, true),
        ] {
            if let Some(t) = self.texts.get_mut(id as usize) {
                *t = block(secure, trusted);
            }
        }
    }

    /// The text of `id`.
    // Measured (callgrind, pipelined 1 KiB): the reply path is hot enough
    // that a call per reply shows; see README "Performance".
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn text(&self, id: ReplyId) -> &[u8] {
        self.texts.get(id as usize).map_or(&[][..], |t| &t[..])
    }

    /// Replaces the text of `id` (a CRLF is added when missing). The text
    /// must be one complete reply with `id`'s own code (the code says what
    /// happened; rules send other codes): the code on every line, `-` on
    /// all but the last; `{size}` in `ChunkReceived` marks the octet count.
    pub fn set(&mut self, id: ReplyId, text: &str) -> Result<(), BadReply> {
        let bytes = crlf(text);
        match parse(&bytes) {
            Parsed::Complete { code, len } if len == bytes.len() && code == id.code() => {}
            _ => return Err(BadReply(text.to_string())),
        }
        if let Some(t) = self.texts.get_mut(id as usize) {
            *t = bytes;
        }
        self.chunk_split = self.find_chunk_split();
        Ok(())
    }

    fn find_chunk_split(&self) -> usize {
        let t = self.text(ReplyId::ChunkReceived);
        memchr::memmem::find(t, b"{size}").unwrap_or(t.len())
    }

    /// Appends the reply to one BDAT chunk of `n` octets without `format!`.
    pub fn chunk_received(&self, n: u64, out: &mut Vec<u8>) {
        let t = self.text(ReplyId::ChunkReceived);
        let (head, tail) = t.split_at(self.chunk_split.min(t.len()));
        out.extend_from_slice(head);
        if let Some(tail) = tail.strip_prefix(b"{size}") {
            decimal::write(n, 0, out);
            out.extend_from_slice(tail);
        }
    }
}

/// `text` with CRLF line ends, one CRLF at the end.
fn crlf(text: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(text.len() + 2);
    for line in text.trim_end_matches(['\r', '\n']).split('\n') {
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.into_boxed_slice()
}

/// A reply as a client sees it (RFC 5321 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete reply: its code and the bytes it spans, CRLF included.
    Complete {
        /// The three-digit reply code.
        code: u16,
        /// Bytes the reply spans, CRLF included.
        len: usize,
    },
    /// More bytes are needed.
    Partial,
    /// Not a reply: no three-digit code, codes that differ between lines,
    /// or longer than [`MAX_REPLY`].
    Malformed,
}

/// Longest reply a client accepts (multi-line EHLO replies included).
pub const MAX_REPLY: usize = 64 * 1024;

/// Parses one possibly multi-line reply at the start of `buf`. Lines end at
/// LF (a CR before it is tolerated missing, as servers vary).
pub fn parse(buf: &[u8]) -> Parsed {
    let mut pos = 0;
    let mut code = None;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(lf) = memchr::memchr(b'\n', rest) else {
            return if buf.len() > MAX_REPLY {
                Parsed::Malformed
            } else {
                Parsed::Partial
            };
        };
        let line = rest.get(..lf).unwrap_or_default();
        let digits = line.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
        let Some(d) = digits else {
            return Parsed::Malformed;
        };
        let this = d.iter().fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
        if code.is_some_and(|c| c != this) {
            return Parsed::Malformed;
        }
        code = Some(this);
        pos += lf + 1;
        match line.get(3) {
            Some(b'-') => {}
            None | Some(b' ' | b'\r') => {
                return Parsed::Complete {
                    code: this,
                    len: pos,
                }
            }
            Some(_) => return Parsed::Malformed,
        }
        if pos > MAX_REPLY {
            return Parsed::Malformed;
        }
    }
}

/// The extension lines of a complete 250 EHLO reply (RFC 5321 4.1.1.1):
/// keyword and parameters, e.g. `AUTH PLAIN LOGIN`.
pub fn ehlo_lines(reply: &[u8]) -> impl Iterator<Item = &[u8]> {
    reply
        .split(|b| *b == b'\n')
        .skip(1)
        .filter_map(|line| line.get(4..))
        .map(|text| text.strip_suffix(b"\r").unwrap_or(text))
        .filter(|k| !k.is_empty())
}

/// The EHLO keywords of a complete 250 reply (RFC 5321 4.1.1.1), upper-cased
/// comparison left to the caller.
pub fn ehlo_keywords(reply: &[u8]) -> impl Iterator<Item = &[u8]> {
    ehlo_lines(reply).map(|text| {
        let end = memchr::memchr(b' ', text).unwrap_or(text.len());
        text.get(..end).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standard(host: &str, size: u64) -> Replies {
        Replies::new(host, &extensions(size))
    }

    #[test]
    fn ehlo_block_is_well_formed() {
        let r = standard("sink.test", 1000);
        let text = String::from_utf8(r.text(ReplyId::Ehlo).to_vec()).unwrap();
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines[0], "250-sink.test");
        assert_eq!(lines[2], "250-SIZE 1000");
        assert_eq!(lines.last(), Some(&"250 HELP"));
        assert!(lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("250-")));
        assert_eq!(
            r.text(ReplyId::Greeting),
            b"220 sink.test ESMTP smtpsink\r\n"
        );
        assert_eq!(
            r.text(ReplyId::Timeout),
            &b"421 4.4.2 sink.test Error: timeout exceeded, closing transmission channel\r\n"[..]
        );
    }

    #[test]
    fn every_default_text_is_one_reply_with_an_enhanced_code_where_allowed() {
        let r = standard("h", 10);
        for &id in ReplyId::ALL {
            let t = r.text(id);
            let Parsed::Complete { code, len } = parse(t) else {
                panic!("{id:?}: {t:?}");
            };
            assert_eq!(len, t.len(), "{id:?}");
            // RFC 3463: greeting, HELO/EHLO and the 3xx intermediate
            // replies (354, AUTH's 334) carry no enhanced code.
            let plain = matches!(
                id,
                ReplyId::Greeting
                    | ReplyId::GreetingLmtp
                    | ReplyId::Helo
                    | ReplyId::Ehlo
                    | ReplyId::EhloSecure
                    | ReplyId::EhloTrusted
                    | ReplyId::EhloSecureTrusted
                    | ReplyId::StartData
                    | ReplyId::AuthChallenge
            );
            let class = code / 100;
            let enhanced = format!("{class}.");
            let has = t.get(4..6) == Some(enhanced.as_bytes());
            assert_eq!(has, !plain, "{id:?}");
        }
        assert_eq!(ReplyId::ALL[ReplyId::Bye as usize], ReplyId::Bye);
    }

    #[test]
    fn offers_differ_before_and_after_tls() {
        let r = Replies::new(
            "h",
            &[
                ("PIPELINING".into(), Offer::Always),
                ("STARTTLS".into(), Offer::BeforeTls),
                ("AUTH PLAIN".into(), Offer::AfterTls),
            ],
        );
        assert_eq!(
            r.text(ReplyId::Ehlo),
            b"250-h\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
        );
        assert_eq!(
            r.text(ReplyId::EhloSecure),
            b"250-h\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n"
        );
    }

    #[test]
    fn texts_can_be_replaced() {
        let mut r = standard("h", 10);
        r.set(ReplyId::RecipientOk, "250 2.1.5 Fine").unwrap();
        assert_eq!(r.text(ReplyId::RecipientOk), b"250 2.1.5 Fine\r\n");
        // The code is the reply's meaning: only rules send other codes.
        assert!(r
            .set(ReplyId::RecipientOk, "550 5.1.1 No such user")
            .is_err());
        assert_eq!(ReplyId::RecipientOk.code(), 250);
        assert_eq!(ReplyId::Shutdown.code(), 421);
        assert_eq!(ReplyId::ERRORS & (1 << ReplyId::Ok as u32), 0);
        assert_ne!(ReplyId::ERRORS & (1 << ReplyId::TooBig as u32), 0);
        r.set(ReplyId::Bye, "221-so long\n221 bye\r\n").unwrap();
        assert_eq!(r.text(ReplyId::Bye), b"221-so long\r\n221 bye\r\n");
        for bad in [
            "hello",
            "25 short",
            "250-a\r\n251 b",
            "999 nine",
            "250-only",
        ] {
            assert!(r.set(ReplyId::Ok, bad).is_err(), "{bad}");
        }
        assert_eq!(r.text(ReplyId::Ok), b"250 2.0.0 Ok\r\n");
        r.set(ReplyId::ChunkReceived, "250 got {size} bytes")
            .unwrap();
        let mut out = Vec::new();
        r.chunk_received(12, &mut out);
        assert_eq!(out, b"250 got 12 bytes\r\n");
        r.set(ReplyId::ChunkReceived, "250 fine").unwrap();
        out.clear();
        r.chunk_received(12, &mut out);
        assert_eq!(out, b"250 fine\r\n");
    }

    #[test]
    fn parses_replies() {
        let r = standard("h", 10);
        let ehlo = r.text(ReplyId::Ehlo);
        assert_eq!(
            parse(ehlo),
            Parsed::Complete {
                code: 250,
                len: ehlo.len()
            }
        );
        let kw: Vec<&[u8]> = ehlo_keywords(ehlo).collect();
        assert!(
            kw.contains(&&b"PIPELINING"[..])
                && kw.contains(&&b"SIZE"[..])
                && kw.contains(&&b"HELP"[..])
        );
        assert_eq!(
            parse(b"250 ok\r\n354 go\r\n"),
            Parsed::Complete { code: 250, len: 8 }
        );
        assert_eq!(parse(b"250\r\n"), Parsed::Complete { code: 250, len: 5 });
        assert_eq!(parse(b"221 bye\n"), Parsed::Complete { code: 221, len: 8 });
        assert_eq!(parse(b"250-a\r\n250"), Parsed::Partial);
        assert_eq!(parse(b"25"), Parsed::Partial);
        assert_eq!(parse(b"250-a\r\n251 b\r\n"), Parsed::Malformed);
        assert_eq!(parse(b"hello\r\n"), Parsed::Malformed);
        assert_eq!(parse(b"250x\r\n"), Parsed::Malformed);
        assert_eq!(parse(&vec![b'2'; MAX_REPLY + 1]), Parsed::Malformed);
    }

    #[test]
    fn chunk_counts() {
        let r = standard("h", 10);
        for (n, want) in [
            (0u64, "0"),
            (7, "7"),
            (1_048_576, "1048576"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            r.chunk_received(n, &mut out);
            assert_eq!(
                out,
                format!("250 2.0.0 {want} octets received\r\n").as_bytes()
            );
        }
    }
}
