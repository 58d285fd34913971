//! The attributes of Postfix's XCLIENT and XFORWARD commands
//! (`XCLIENT_README`, `XFORWARD_README`): what a trusted proxy or content
//! filter says about the client it speaks for.
//!
//! Owns: the attribute grammar (`NAME=value` pairs, values in xtext,
//! RFC 3461 4) and what each attribute means here. Pure and sans-IO.

use super::reply::ReplyId;
use core::net::{IpAddr, SocketAddr};
use std::borrow::Cow;

/// Longest attribute value kept, decoded (Postfix's own names and
/// addresses are far shorter; a longer one is refused, not cut).
pub const MAX_VALUE: usize = 255;

/// Which command the attributes came with: each has its own names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// XCLIENT; its names are in [`Kind::names`].
    Xclient,
    /// XFORWARD.
    Xforward,
}

impl Kind {
    /// The attribute names, as advertised in the EHLO block.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Kind::Xclient => &[
                "NAME",
                "REVERSE_NAME",
                "ADDR",
                "PORT",
                "PROTO",
                "HELO",
                "LOGIN",
                "DESTADDR",
                "DESTPORT",
            ],
            Kind::Xforward => &["NAME", "ADDR", "PORT", "PROTO", "HELO", "IDENT", "SOURCE"],
        }
    }

    /// The EHLO keyword line: `XCLIENT NAME ADDR ...`.
    pub fn ehlo_line(self) -> String {
        let verb = match self {
            Kind::Xclient => "XCLIENT",
            Kind::Xforward => "XFORWARD",
        };
        format!("{verb} {}", self.names().join(" "))
    }

    fn syntax(self) -> ReplyId {
        match self {
            Kind::Xclient => ReplyId::SyntaxXclient,
            Kind::Xforward => ReplyId::SyntaxXforward,
        }
    }

    fn bad_name(self) -> ReplyId {
        match self {
            Kind::Xclient => ReplyId::BadXclientAttribute,
            Kind::Xforward => ReplyId::BadXforwardAttribute,
        }
    }
}

/// What is known of the real client. `None`: not said (or said to be
/// `[UNAVAILABLE]`/`[TEMPUNAVAIL]`, which Postfix sends for "unknown").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Client {
    /// ADDR.
    pub addr: Option<IpAddr>,
    /// PORT.
    pub port: Option<u16>,
    /// NAME: the client's verified host name.
    pub name: Option<Box<[u8]>>,
    /// HELO: the name it greeted with.
    pub helo: Option<Box<[u8]>>,
    /// PROTO: SMTP or ESMTP (XFORWARD: any protocol name).
    pub proto: Option<Box<[u8]>>,
    /// LOGIN (XCLIENT): the name it authenticated as.
    pub login: Option<Box<[u8]>>,
    /// Which attributes were given (known or `[UNAVAILABLE]`): one bit
    /// each, as `SAID_ADDR`...
    said: u8,
}

const SAID_ADDR: u8 = 1;
const SAID_PORT: u8 = 2;
const SAID_NAME: u8 = 4;
const SAID_HELO: u8 = 8;
const SAID_PROTO: u8 = 16;
const SAID_LOGIN: u8 = 32;

impl Client {
    /// ADDR and PORT as one address (port 0 when only ADDR was said).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr
            .map(|ip| SocketAddr::new(ip, self.port.unwrap_or(0)))
    }

    /// Whether ADDR was given, if only as unknown (then `addr` is `None`:
    /// the client's address is not known).
    pub fn said_addr(&self) -> bool {
        self.said & SAID_ADDR != 0
    }

    /// Takes what `other` says, keeping what it leaves unsaid (XCLIENT
    /// attributes not given keep their values; `[UNAVAILABLE]` clears one).
    pub fn update(&mut self, other: Client) {
        let Client {
            addr,
            port,
            name,
            helo,
            proto,
            login,
            said,
        } = other;
        let given = |bit: u8| said & bit != 0;
        if given(SAID_ADDR) {
            self.addr = addr;
        }
        if given(SAID_PORT) {
            self.port = port;
        }
        if given(SAID_NAME) {
            self.name = name;
        }
        if given(SAID_HELO) {
            self.helo = helo;
        }
        if given(SAID_PROTO) {
            self.proto = proto;
        }
        if given(SAID_LOGIN) {
            self.login = login;
        }
        self.said |= said;
    }
}

/// Parses the attributes of one command (the line after its verb). An
/// attribute may repeat (the last one counts); `[UNAVAILABLE]` and
/// `[TEMPUNAVAIL]` say "unknown". Errors name the reply to send.
pub fn parse(kind: Kind, args: &[u8]) -> Result<Client, ReplyId> {
    let mut c = Client::default();
    let mut any = false;
    for attr in args.split(|&b| b == b' ').filter(|a| !a.is_empty()) {
        any = true;
        let eq = memchr::memchr(b'=', attr).ok_or(kind.syntax())?;
        let (name, raw) = (
            attr.get(..eq).unwrap_or_default(),
            attr.get(eq + 1..).unwrap_or_default(),
        );
        let known = kind
            .names()
            .iter()
            .find(|n| n.as_bytes().eq_ignore_ascii_case(name))
            .ok_or(kind.bad_name())?;
        let value = xtext(raw).ok_or(kind.syntax())?;
        if value.len() > MAX_VALUE {
            return Err(kind.syntax());
        }
        let unknown = value.eq_ignore_ascii_case(b"[UNAVAILABLE]")
            || value.eq_ignore_ascii_case(b"[TEMPUNAVAIL]");
        // Non-printable octets (xtext can carry any) become `?`, as in
        // Postfix: these values go into trace headers.
        let text = || {
            (!unknown).then(|| {
                value
                    .iter()
                    .map(|&b| if (0x21..=0x7e).contains(&b) { b } else { b'?' })
                    .collect::<Box<[u8]>>()
            })
        };
        c.said |= match *known {
            "ADDR" => SAID_ADDR,
            "PORT" => SAID_PORT,
            "NAME" => SAID_NAME,
            "HELO" => SAID_HELO,
            "PROTO" => SAID_PROTO,
            "LOGIN" => SAID_LOGIN,
            _ => 0,
        };
        match *known {
            "ADDR" => {
                c.addr = if unknown {
                    None
                } else {
                    Some(address(&value).ok_or(kind.syntax())?)
                }
            }
            "PORT" => {
                c.port = if unknown {
                    None
                } else {
                    let p = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|s| s.parse().ok());
                    Some(p.ok_or(kind.syntax())?)
                }
            }
            "NAME" => c.name = text(),
            "HELO" => c.helo = text(),
            "PROTO" => {
                if kind == Kind::Xclient
                    && !unknown
                    && !(value.eq_ignore_ascii_case(b"SMTP")
                        || value.eq_ignore_ascii_case(b"ESMTP"))
                {
                    return Err(kind.syntax());
                }
                c.proto = text();
            }
            "LOGIN" => c.login = text(),
            // Known, and accepted, but nothing here uses them.
            _ => {}
        }
    }
    if any {
        Ok(c)
    } else {
        Err(kind.syntax())
    }
}

/// An ADDR value: IPv4, or IPv6 after an `IPV6:` prefix (Postfix sends
/// it; a bare IPv6 address is taken too).
fn address(v: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(v).ok()?;
    let s = match s.get(..5) {
        Some(p) if p.eq_ignore_ascii_case("IPV6:") => s.get(5..)?,
        _ => s,
    };
    s.parse().ok()
}

/// Decodes xtext (RFC 3461 4): `+XX` is the octet with hex value XX;
/// other octets are printable ASCII but `+` and `=`. Borrowed when there
/// is nothing to decode (the usual case: no allocation per attribute).
fn xtext(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !raw.contains(&b'+') {
        let plain = raw.iter().all(|&b| (b'!'..=b'~').contains(&b) && b != b'=');
        return plain.then_some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'+' {
            let hex = raw.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if (b'!'..=b'~').contains(&b) && b != b'=' {
            out.push(b);
            i += 1;
        } else {
            return None;
        }
    }
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xclient_attributes_parse() {
        let c = parse(
            Kind::Xclient,
            b"NAME=mx.example.org ADDR=192.0.2.7 PORT=4711 HELO=client+2Eexample PROTO=ESMTP",
        )
        .unwrap();
        assert_eq!(c.addr, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.port, Some(4711));
        assert_eq!(c.socket_addr(), Some("192.0.2.7:4711".parse().unwrap()));
        assert_eq!(c.name.as_deref(), Some(&b"mx.example.org"[..]));
        assert_eq!(c.helo.as_deref(), Some(&b"client.example"[..]));
        assert_eq!(c.proto.as_deref(), Some(&b"ESMTP"[..]));
    }

    #[test]
    fn ipv6_unavailable_and_case() {
        let c = parse(Kind::Xclient, b"addr=IPV6:2001:db8::1 name=[UNAVAILABLE]").unwrap();
        assert_eq!(c.addr, Some("2001:db8::1".parse().unwrap()));
        assert_eq!(c.name, None);
        let c = parse(Kind::Xforward, b"ADDR=[TEMPUNAVAIL] SOURCE=REMOTE IDENT=x").unwrap();
        assert_eq!((c.addr, c.port, c.socket_addr()), (None, None, None));
        assert!(c.said_addr(), "an unknown address, not an unsaid one");
    }

    #[test]
    fn errors_name_their_reply() {
        let x = Kind::Xclient;
        assert_eq!(parse(x, b""), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"  "), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"ADDR"), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"FOO=1"), Err(ReplyId::BadXclientAttribute));
        // IDENT is XFORWARD's, not XCLIENT's.
        assert_eq!(parse(x, b"IDENT=1"), Err(ReplyId::BadXclientAttribute));
        assert_eq!(parse(x, b"ADDR=300.1.1.1"), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"PORT=65536"), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"PROTO=HTTP"), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"NAME=a+2"), Err(ReplyId::SyntaxXclient));
        assert_eq!(parse(x, b"NAME=a+zz"), Err(ReplyId::SyntaxXclient));
        let long = format!("NAME={}", "a".repeat(MAX_VALUE + 1));
        assert_eq!(parse(x, long.as_bytes()), Err(ReplyId::SyntaxXclient));
        assert_eq!(
            parse(Kind::Xforward, b"LOGIN=u"),
            Err(ReplyId::BadXforwardAttribute)
        );
        assert!(parse(Kind::Xforward, b"PROTO=LMTP").is_ok());
    }

    #[test]
    fn unavailable_clears_and_control_octets_become_question_marks() {
        let mut c = parse(Kind::Xclient, b"ADDR=10.0.0.1 LOGIN=alice").unwrap();
        c.update(parse(Kind::Xclient, b"ADDR=[UNAVAILABLE] LOGIN=[UNAVAILABLE]").unwrap());
        assert_eq!((c.addr, c.login.as_deref()), (None, None));
        assert!(c.said_addr());
        assert!(!parse(Kind::Xclient, b"NAME=x").unwrap().said_addr());
        let c = parse(
            Kind::Xforward,
            b"HELO=evil+0D+0AX-Injected:+20yes NAME=a+00b",
        )
        .unwrap();
        assert_eq!(c.helo.as_deref(), Some(&b"evil??X-Injected:?yes"[..]));
        assert_eq!(c.name.as_deref(), Some(&b"a?b"[..]));
    }

    #[test]
    fn update_keeps_what_is_unsaid() {
        let mut c = parse(Kind::Xclient, b"ADDR=10.0.0.1 NAME=a").unwrap();
        c.update(parse(Kind::Xclient, b"NAME=b").unwrap());
        assert_eq!(c.addr, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(c.name.as_deref(), Some(&b"b"[..]));
    }

    #[test]
    fn ehlo_lines() {
        assert_eq!(
            Kind::Xforward.ehlo_line(),
            "XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE"
        );
        assert!(Kind::Xclient
            .ehlo_line()
            .starts_with("XCLIENT NAME REVERSE_NAME ADDR"));
    }
}
