//! `HAProxy`'s PROXY protocol (versions 1 and 2): the header a proxy sends
//! before anything else, carrying the address of the client it relays.
//!
//! Writing headers, for the load generator (`smtpload --proxy`); reading
//! them belongs here too. The formats are those of `HAProxy`'s
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ends_of_two_families_have_no_header() {
        assert_eq!(header(Version::V1, a("10.0.0.1:1"), a("[::1]:25")), None);
        assert_eq!(header(Version::V2, a("[::1]:1"), a("10.0.0.1:25")), None);
    }
}
