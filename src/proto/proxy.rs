//! `HAProxy`'s PROXY protocol (versions 1 and 2): the header a proxy sends
//! before anything else, carrying the address of the client it relays.
//!
//! Writing headers, for the load generator (`smtpload --proxy`), and
//! reading them ([`parse`]), sans-IO: the caller offers what it has read so
//! far and learns whether a whole header is there. The formats are those of `HAProxy`'s
//! `proxy-protocol.txt`: version 1 is one text line, version 2 a binary
//! block after a fixed 12-byte signature.

use std::net::SocketAddr;

/// Which header to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

/// The 12 bytes every version 2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a TCP connection from `src` to `dst`, or `None` when the
/// two are not of one address family (a proxy relays one connection, whose
/// ends are).
pub fn header(version: Version, src: SocketAddr, dst: SocketAddr) -> Option<Vec<u8>> {
    if src.is_ipv4() != dst.is_ipv4() {
        return None;
    }
    Some(match version {
        Version::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut h = Vec::with_capacity(16 + 36);
            h.extend_from_slice(&V2_SIGNATURE);
            // Version 2, command PROXY.
            h.push(0x21);
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    // AF_INET, SOCK_STREAM; 2 addresses of 4 bytes, 2 ports.
                    h.extend_from_slice(&[0x11, 0, 12]);
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    // AF_INET6, SOCK_STREAM; 2 addresses of 16 bytes, 2 ports.
                    h.extend_from_slice(&[0x21, 0, 36]);
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                }
                _ => return None,
            }
            h.extend_from_slice(&src.port().to_be_bytes());
            h.extend_from_slice(&dst.port().to_be_bytes());
            h
        }
    })
}

/// The longest version 1 header, `\r\n` included (the spec's bound).
pub const V1_MAX: usize = 107;

/// The longest version 2 header taken: the 16 fixed bytes and up to 1 KiB
/// of addresses and extensions (TLVs). Proxies send far less; a larger
/// one is refused rather than buffered.
pub const V2_MAX: usize = 16 + 1024;

/// What the start of a connection's input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header: more input is needed.
    Partial,
    /// A whole header of `len` bytes. `client` is the address it carries;
    /// `None` for `LOCAL`, `UNKNOWN` and families without an IP address
    /// (the connection's own ends stand).
    Header {
        /// Bytes of input the header took.
        len: usize,
        /// The client the proxy relays.
        client: Option<SocketAddr>,
    },
    /// Not a PROXY header, or a malformed one: why, for the log.
    Invalid(&'static str),
}

/// Reads a PROXY header (version 1 or 2) from the start of `input`.
pub fn parse(input: &[u8]) -> Parsed {
    const V1_START: &[u8] = b"PROXY ";
    let n = input.len().min(V2_SIGNATURE.len());
    if input.get(..n) == V2_SIGNATURE.get(..n) {
        return if n < V2_SIGNATURE.len() {
            Parsed::Partial
        } else {
            parse_v2(input)
        };
    }
    let n = input.len().min(V1_START.len());
    if input.get(..n) == V1_START.get(..n) {
        return if n < V1_START.len() {
            Parsed::Partial
        } else {
            parse_v1(input)
        };
    }
    Parsed::Invalid("no PROXY header")
}

fn parse_v1(input: &[u8]) -> Parsed {
    let window = input.get(..input.len().min(V1_MAX)).unwrap_or_default();
    // The line ends at its first LF, which a CR must precede.
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return if input.len() >= V1_MAX {
            Parsed::Invalid("version 1 header too long")
        } else {
            Parsed::Partial
        };
    };
    let Some(end) = lf
        .checked_sub(1)
        .filter(|&cr| window.get(cr) == Some(&b'\r'))
    else {
        return Parsed::Invalid("version 1 header: LF without CR");
    };
    let line = window.get(..end).unwrap_or_default();
    // Split on single spaces, bytewise (a `str` split costs a searcher per
    // field: measured, most of a header's cost).
    let mut words = line.split(|b| *b == b' ');
    let _proxy = words.next();
    let len = end + 2;
    match words.next() {
        // The sender does not know the ends: the rest of the line is ignored.
        Some(b"UNKNOWN") => Parsed::Header { len, client: None },
        Some(family @ (b"TCP4" | b"TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                words.next(),
                words.next(),
                words.next(),
                words.next(),
                words.next(),
            ) else {
                return Parsed::Invalid("version 1 header: not 4 fields after the family");
            };
            let v4 = family == b"TCP4";
            let ip = |t: &[u8]| -> Option<std::net::IpAddr> {
                if v4 {
                    ipv4(t).map(std::net::IpAddr::V4)
                } else {
                    let t = std::str::from_utf8(t).ok()?;
                    t.parse::<std::net::Ipv6Addr>()
                        .ok()
                        .map(std::net::IpAddr::V6)
                }
            };
            // Ports in decimal, 0 to 65535, without a sign or leading zeros.
            let port = |t: &[u8]| -> Option<u16> {
                let canonical = t == b"0" || t.first().is_some_and(|d| (b'1'..=b'9').contains(d));
                if !canonical || t.len() > 5 || !t.iter().all(u8::is_ascii_digit) {
                    return None;
                }
                let n = t.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
                u16::try_from(n).ok()
            };
            match (ip(src), ip(dst), port(sport), port(dport)) {
                (Some(src), Some(_), Some(sport), Some(_)) => Parsed::Header {
                    len,
                    client: Some(SocketAddr::new(src, sport)),
                },
                _ => Parsed::Invalid("version 1 header: bad address or port"),
            }
        }
        _ => Parsed::Invalid("version 1 header: unknown family"),
    }
}

/// A dotted-quad IPv4 address as `Ipv4Addr::from_str` reads one (four
/// decimal octets, 0 to 255, no leading zeros), straight from the bytes:
/// with `from_utf8` first, std's parser was most of a version 1 header's
/// cost (callgrind: ~900 of ~1,300 instructions for two addresses).
fn ipv4(t: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut octets = [0u8; 4];
    let (mut i, mut n, mut digits) = (0usize, 0u16, 0u8);
    for &b in t {
        if b == b'.' {
            if digits == 0 {
                return None;
            }
            *octets.get_mut(i)? = u8::try_from(n).ok()?;
            i += 1;
            (n, digits) = (0, 0);
        } else if b.is_ascii_digit() {
            if digits > 0 && n == 0 {
                // A leading zero.
                return None;
            }
            n = n * 10 + u16::from(b - b'0');
            digits += 1;
            if n > 255 {
                return None;
            }
        } else {
            return None;
        }
    }
    if digits == 0 || i != 3 {
        return None;
    }
    *octets.get_mut(3)? = u8::try_from(n).ok()?;
    Some(std::net::Ipv4Addr::from(octets))
}

fn parse_v2(input: &[u8]) -> Parsed {
    let Some(&[ver_cmd, family, hi, lo]) = input.get(12..16) else {
        return Parsed::Partial;
    };
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("version 2 header: bad version");
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Parsed::Invalid("version 2 header: bad command"),
    };
    let len = 16 + usize::from(u16::from_be_bytes([hi, lo]));
    if len > V2_MAX {
        return Parsed::Invalid("version 2 header too long");
    }
    let Some(body) = input.get(16..len) else {
        return Parsed::Partial;
    };
    if local {
        // A proxy's own connection (a health check): its own ends stand.
        return Parsed::Header { len, client: None };
    }
    let client = match family {
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
        0x11 => match body.get(..12) {
            Some(&[a, b, c, d, _, _, _, _, p1, p2, _, _]) => Some(SocketAddr::from((
                [a, b, c, d],
                u16::from_be_bytes([p1, p2]),
            ))),
            _ => return Parsed::Invalid("version 2 header: short IPv4 block"),
        },
        // TCP over IPv6: 16 + 16 address bytes, then the ports.
        0x21 => {
            let (Some(src), Some(&[p1, p2])) = (body.get(..16), body.get(32..34)) else {
                return Parsed::Invalid("version 2 header: short IPv6 block");
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(src);
            Some(SocketAddr::from((octets, u16::from_be_bytes([p1, p2]))))
        }
        // Unspecified: no address to carry.
        0x00 => None,
        // A UNIX stream socket: 2 x 108 path bytes, no IP address to carry.
        0x31 if body.len() >= 216 => None,
        0x31 => return Parsed::Invalid("version 2 header: short UNIX block"),
        // Datagrams (UDP, UNIX datagrams) are not an SMTP client's.
        0x12 | 0x22 | 0x32 => return Parsed::Invalid("version 2 header: not a stream"),
        _ => return Parsed::Invalid("version 2 header: bad family"),
    };
    Parsed::Header { len, client }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The bytewise IPv4 reader agrees with std's on dotted digits of
        /// every shape (leading zeros, too many parts, octets over 255).
        #[test]
        fn ipv4_reads_as_std_does(t in "[0-9.]{0,18}") {
            prop_assert_eq!(ipv4(t.as_bytes()), t.parse::<std::net::Ipv4Addr>().ok());
        }

        /// The same for four numbers around the octet range, some with a
        /// leading zero (random digits and dots rarely make an address).
        #[test]
        fn ipv4_quads_read_as_std_does(
            q in prop::array::uniform4(0u16..300),
            zero in prop::array::uniform4(any::<bool>()),
        ) {
            let part = |i: usize| format!("{}{}", if zero[i] { "0" } else { "" }, q[i]);
            let t = format!("{}.{}.{}.{}", part(0), part(1), part(2), part(3));
            prop_assert_eq!(ipv4(t.as_bytes()), t.parse::<std::net::Ipv4Addr>().ok());
        }

        /// Any bytes after either signature (or none): an answer, never a
        /// panic; a header never claims more than was offered, and what
        /// was partial stays partial or becomes an answer as bytes come.
        #[test]
        fn any_input_gets_an_answer(
            v2 in any::<bool>(),
            tail in prop::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut input = if v2 { V2_SIGNATURE.to_vec() } else { b"PROXY ".to_vec() };
            input.extend_from_slice(&tail);
            for cut in 0..=input.len() {
                if let Parsed::Header { len, .. } = parse(&input[..cut]) {
                    prop_assert!(len <= cut);
                }
            }
        }
    }

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_1_is_the_spec_line() {
        assert_eq!(
            header(Version::V1, a("192.168.0.1:56324"), a("192.168.0.11:443")).unwrap(),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            header(Version::V1, a("[2001:db8::1]:1025"), a("[::1]:25")).unwrap(),
            b"PROXY TCP6 2001:db8::1 ::1 1025 25\r\n"
        );
    }

    #[test]
    fn version_2_is_signature_command_family_length_addresses_ports() {
        let h = header(Version::V2, a("10.0.0.1:1025"), a("127.0.0.1:25")).unwrap();
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 10, 0, 0, 1, 127, 0, 0, 1, 4, 1, 0, 25]);
        assert_eq!(h, want);
        let h = header(Version::V2, a("[2001:db8::7]:65535"), a("[::1]:2525")).unwrap();
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            &h[16..32],
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(&h[48..], &[0xff, 0xff, 0x09, 0xdd]);
    }

    /// Every prefix of `header` is partial; the header, with what follows
    /// it, is one header of its length naming `client`.
    fn whole_and_split(header: &[u8], client: Option<&str>) {
        let mut input = header.to_vec();
        input.extend_from_slice(b"EHLO client.test\r\n");
        for cut in 0..header.len() {
            assert_eq!(parse(&input[..cut]), Parsed::Partial, "cut at {cut}");
        }
        let want = Parsed::Header {
            len: header.len(),
            client: client.map(a),
        };
        assert_eq!(parse(header), want);
        assert_eq!(parse(&input), want);
    }

    #[test]
    fn headers_are_read_whole_and_split_at_every_byte() {
        for (src, dst) in [
            ("192.0.2.7:1025", "127.0.0.1:25"),
            ("[2001:db8::7]:65535", "[::1]:2525"),
            ("0.0.0.0:0", "255.255.255.255:65535"),
        ] {
            for v in [Version::V1, Version::V2] {
                whole_and_split(&header(v, a(src), a(dst)).unwrap(), Some(src));
            }
        }
        whole_and_split(b"PROXY UNKNOWN\r\n", None);
        whole_and_split(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", None);
        // The longest version 1 line there is (104 bytes).
        let all = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let longest = format!("PROXY TCP6 {all} {all} 65535 65535\r\n");
        assert!(longest.len() <= V1_MAX);
        whole_and_split(longest.as_bytes(), Some(&format!("[{all}]:65535")));
        let mut v2 = V2_SIGNATURE.to_vec();
        // LOCAL (a health check), with 3 bytes of something after it.
        v2.extend_from_slice(&[0x20, 0x00, 0, 3, 1, 2, 3]);
        whole_and_split(&v2, None);
        // PROXY over a UNIX socket: 2 x 108 path bytes.
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x31, 0, 216]);
        v2.extend_from_slice(&[0u8; 216]);
        whole_and_split(&v2, None);
        // TCP over IPv4 with a TLV after the addresses (an AWS VPC id, say).
        let mut v2 = header(Version::V2, a("10.1.2.3:4444"), a("10.0.0.1:25")).unwrap();
        v2[15] = 12 + 7;
        v2.extend_from_slice(&[0xEA, 0, 4, b'v', b'p', b'c', b'e']);
        whole_and_split(&v2, Some("10.1.2.3:4444"));
    }

    #[test]
    fn anything_else_is_invalid_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"EHLO client.test\r\n", "no PROXY header"),
            (b"GET / HTTP/1.0\r\n", "no PROXY header"),
            (
                b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
                "version 1 header: unknown family",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                "version 1 header: not 4 fields after the family",
            ),
            (
                b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
                "version 1 header: not 4 fields after the family",
            ),
            (
                b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
                "version 1 header: bad address or port",
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
                "version 1 header: bad address or port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                "version 1 header: bad address or port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 025 2\r\n",
                "version 1 header: bad address or port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +25 2\r\n",
                "version 1 header: bad address or port",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 25 2\n",
                "version 1 header: LF without CR",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 25 2 ",
                "version 1 header too long",
            ),
        ];
        for (input, why) in cases {
            let mut input = input.to_vec();
            if why.ends_with("too long") {
                // No line end in the first 107 bytes.
                input.resize(V1_MAX, b'x');
            }
            assert_eq!(
                parse(&input),
                Parsed::Invalid(why),
                "{:?}",
                String::from_utf8_lossy(&input)
            );
        }
        let v2 = |ver_cmd: u8, family: u8, len: u16| {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[ver_cmd, family]);
            h.extend_from_slice(&len.to_be_bytes());
            h.resize(16 + usize::from(len), 0);
            h
        };
        assert_eq!(
            parse(&v2(0x11, 0x11, 12)),
            Parsed::Invalid("version 2 header: bad version")
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, 12)),
            Parsed::Invalid("version 2 header: bad command")
        );
        for (family, len, why) in [
            (0x12, 12, "version 2 header: not a stream"),
            (0x22, 36, "version 2 header: not a stream"),
            (0x32, 216, "version 2 header: not a stream"),
            (0x31, 100, "version 2 header: short UNIX block"),
        ] {
            assert_eq!(parse(&v2(0x21, family, len)), Parsed::Invalid(why));
        }
        assert_eq!(
            parse(&v2(0x21, 0x41, 12)),
            Parsed::Invalid("version 2 header: bad family")
        );
        assert_eq!(
            parse(&v2(0x21, 0x11, 4)),
            Parsed::Invalid("version 2 header: short IPv4 block")
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, 12)),
            Parsed::Invalid("version 2 header: short IPv6 block")
        );
        let oversize = u16::try_from(V2_MAX - 16 + 1).unwrap();
        // Refused from its first 16 bytes, before the rest is buffered.
        assert_eq!(
            parse(&v2(0x21, 0x11, oversize)[..16]),
            Parsed::Invalid("version 2 header too long")
        );
    }

    #[test]
    fn ends_of_two_families_have_no_header() {
        assert_eq!(header(Version::V1, a("10.0.0.1:1"), a("[::1]:25")), None);
        assert_eq!(header(Version::V2, a("[::1]:1"), a("10.0.0.1:25")), None);
    }
}
