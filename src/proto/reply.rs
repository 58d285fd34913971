//! Reply texts (RFC 5321 4.2, RFC 3463 enhanced status codes, RFC 2034).
//!
//! Owns: every fixed reply line, pre-encoded with its CRLF so the hot path
//! only copies bytes. Replies that name the host (greeting, EHLO, 421) are
//! rendered once per server by [`Rendered`]. Every reply but the greeting,
//! HELO/EHLO and the 354 intermediate reply carries an enhanced code (RFC 3463
//! defines classes 2, 4 and 5 only, so 354 cannot carry one).

/// One complete reply line (or lines), CRLF included.
pub type Reply = &'static [u8];

pub const OK: Reply = b"250 2.0.0 Ok\r\n";
pub const SENDER_OK: Reply = b"250 2.1.0 Ok\r\n";
pub const RECIPIENT_OK: Reply = b"250 2.1.5 Ok\r\n";
pub const QUEUED: Reply = b"250 2.0.0 Ok: queued\r\n";
pub const START_DATA: Reply = b"354 End data with <CR><LF>.<CR><LF>\r\n";
pub const VRFY: Reply =
    b"252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
pub const HELP: Reply =
    b"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET VRFY EXPN HELP NOOP QUIT\r\n";
pub const BYE: Reply = b"221 2.0.0 Bye\r\n";

pub const UNRECOGNIZED: Reply = b"500 5.5.2 Error: command not recognized\r\n";
pub const LINE_TOO_LONG: Reply = b"500 5.5.2 Error: line too long\r\n";
pub const BARE_LF: Reply = b"500 5.5.2 Error: bare <LF> received; end lines with <CR><LF>\r\n";
pub const BAD_CHAR: Reply = b"500 5.5.2 Error: control character in command\r\n";
pub const NOT_IMPLEMENTED: Reply = b"502 5.5.1 Error: command not implemented\r\n";

pub const SYNTAX_HELO: Reply = b"501 5.5.4 Syntax: HELO hostname\r\n";
pub const SYNTAX_EHLO: Reply = b"501 5.5.4 Syntax: EHLO hostname\r\n";
pub const SYNTAX_MAIL: Reply = b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
pub const SYNTAX_RCPT: Reply = b"501 5.5.4 Syntax: RCPT TO:<address>\r\n";
pub const SYNTAX_DATA: Reply = b"501 5.5.4 Syntax: DATA\r\n";
pub const SYNTAX_BDAT: Reply = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n";
pub const SYNTAX_RSET: Reply = b"501 5.5.4 Syntax: RSET\r\n";
pub const SYNTAX_QUIT: Reply = b"501 5.5.4 Syntax: QUIT\r\n";
pub const SYNTAX_VRFY: Reply = b"501 5.5.4 Syntax: VRFY address\r\n";
pub const BAD_SENDER: Reply = b"501 5.1.7 Bad sender address syntax\r\n";
pub const BAD_RECIPIENT: Reply = b"501 5.1.3 Bad recipient address syntax\r\n";
pub const SENDER_TOO_LONG: Reply = b"501 5.1.7 Error: sender path too long\r\n";
pub const RECIPIENT_TOO_LONG: Reply = b"501 5.1.3 Error: recipient path too long\r\n";
pub const BAD_PARAM_SYNTAX: Reply = b"501 5.5.4 Error: bad parameter syntax\r\n";
pub const NEEDS_SMTPUTF8: Reply = b"553 5.6.7 Error: non-ASCII address requires SMTPUTF8\r\n";
pub const UNSUPPORTED_MAIL_PARAM: Reply = b"555 5.5.4 Error: unsupported MAIL parameter\r\n";
pub const UNSUPPORTED_RCPT_PARAM: Reply = b"555 5.5.4 Error: unsupported RCPT parameter\r\n";

pub const NEED_HELO: Reply = b"503 5.5.1 Error: send HELO/EHLO first\r\n";
pub const NESTED_MAIL: Reply = b"503 5.5.1 Error: nested MAIL command\r\n";
pub const NEED_MAIL: Reply = b"503 5.5.1 Error: need MAIL command\r\n";
pub const NEED_RCPT: Reply = b"503 5.5.1 Error: need RCPT command\r\n";
pub const DATA_AFTER_BDAT: Reply = b"503 5.5.1 Error: DATA not allowed after BDAT\r\n";
pub const BINARYMIME_NEEDS_BDAT: Reply = b"503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n";

pub const RCPT_AFTER_BDAT: Reply = b"503 5.5.1 Error: RCPT after BDAT\r\n";
/// Closes the connection: after a BDAT line we cannot execute we cannot tell
/// chunk bytes from commands (Postfix answers the same way).
pub const BDAT_DESYNC: Reply = b"521 5.5.4 Error: unusable BDAT command; closing connection\r\n";

pub const TOO_MANY_RECIPIENTS: Reply = b"452 4.5.3 Error: too many recipients\r\n";
pub const TOO_BIG: Reply = b"552 5.3.4 Error: message size exceeds fixed limit\r\n";
pub const BARE_LF_IN_DATA: Reply = b"550 5.5.2 Error: bare <LF> received in message data\r\n";

/// Replies that name the server, rendered once from the configuration.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub greeting: Vec<u8>,
    pub helo: Vec<u8>,
    pub ehlo: Vec<u8>,
    pub shutdown: Vec<u8>,
    pub timeout: Vec<u8>,
}

impl Rendered {
    /// Renders the host-specific replies. `max_size` is advertised by SIZE.
    pub fn new(hostname: &str, max_size: u64) -> Self {
        let lines = |ls: &[String]| -> Vec<u8> {
            let mut out = Vec::new();
            for (i, l) in ls.iter().enumerate() {
                let sep = if i + 1 == ls.len() { ' ' } else { '-' };
                out.extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
            }
            out
        };
        let ehlo = [
            hostname.to_string(),
            "PIPELINING".into(),
            format!("SIZE {max_size}"),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            "SMTPUTF8".into(),
            "CHUNKING".into(),
            "BINARYMIME".into(),
            "DSN".into(),
            "HELP".into(),
        ];
        Self {
            greeting: format!("220 {hostname} ESMTP smtpsink\r\n").into_bytes(),
            helo: format!("250 {hostname}\r\n").into_bytes(),
            ehlo: lines(&ehlo),
            shutdown: format!(
                "421 4.3.2 {hostname} Service shutting down, closing transmission channel\r\n"
            )
            .into_bytes(),
            timeout: format!(
                "421 4.4.2 {hostname} Error: timeout exceeded, closing transmission channel\r\n"
            )
            .into_bytes(),
        }
    }
}

/// Appends `250 2.0.0 <n> octets received` (one BDAT chunk) without
/// going through `format!`.
pub fn chunk_received(n: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"250 2.0.0 ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n;
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
    out.extend_from_slice(b" octets received\r\n");
}

/// A reply as a client sees it (RFC 5321 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete reply: its code and the bytes it spans, CRLF included.
    Complete { code: u16, len: usize },
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

/// The EHLO keywords of a complete 250 reply (RFC 5321 4.1.1.1), upper-cased
/// comparison left to the caller.
pub fn ehlo_keywords(reply: &[u8]) -> impl Iterator<Item = &[u8]> {
    reply
        .split(|b| *b == b'\n')
        .skip(1)
        .filter_map(|line| line.get(4..))
        .map(|text| {
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let end = memchr::memchr(b' ', text).unwrap_or(text.len());
            text.get(..end).unwrap_or_default()
        })
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_block_is_well_formed() {
        let r = Rendered::new("sink.test", 1000);
        let text = String::from_utf8(r.ehlo).unwrap();
        let lines: Vec<&str> = text.split_terminator("\r\n").collect();
        assert_eq!(lines[0], "250-sink.test");
        assert_eq!(lines[2], "250-SIZE 1000");
        assert_eq!(lines.last(), Some(&"250 HELP"));
        assert!(lines[..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("250-")));
        assert_eq!(r.greeting, b"220 sink.test ESMTP smtpsink\r\n");
    }

    #[test]
    fn parses_replies() {
        let r = Rendered::new("h", 10);
        assert_eq!(
            parse(&r.ehlo),
            Parsed::Complete {
                code: 250,
                len: r.ehlo.len()
            }
        );
        let kw: Vec<&[u8]> = ehlo_keywords(&r.ehlo).collect();
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
        for (n, want) in [
            (0u64, "0"),
            (7, "7"),
            (1048576, "1048576"),
            (u64::MAX, "18446744073709551615"),
        ] {
            let mut out = Vec::new();
            chunk_received(n, &mut out);
            assert_eq!(
                out,
                format!("250 2.0.0 {want} octets received\r\n").as_bytes()
            );
        }
    }
}
