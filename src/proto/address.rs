//! Mailbox and path syntax (RFC 5321 4.1.2, 4.5.3.1; RFC 6531 3.3).
//!
//! Owns: deciding whether the text between `<` and `>` is a valid path.
//! Source routes are accepted and dropped (RFC 5321 appendix C). Non-ASCII is
//! allowed only when the transaction declared SMTPUTF8. Nothing is resolved.

use std::net::Ipv6Addr;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// Not a path RFC 5321 4.1.2 allows.
    Syntax,
    /// Non-ASCII without SMTPUTF8 on MAIL (RFC 6531).
    NeedsUtf8,
    /// Past a length limit of RFC 5321 4.5.3.1.
    TooLong,
}

const MAX_PATH: usize = 256; // RFC 5321 4.5.3.1.3, brackets included
const MAX_LOCAL: usize = 64; // 4.5.3.1.1
const MAX_DOMAIN: usize = 255; // 4.5.3.1.2

/// Index of the `>` that closes a path whose `<` was just stripped, skipping
/// quoted strings (a quoted local part may hold `>`).
pub fn closing_bracket(s: &[u8]) -> Option<usize> {
    // The common case has no quotes at all: one memchr.
    match memchr::memchr2(b'>', b'"', s) {
        Some(i) if s.get(i) == Some(&b'>') => return Some(i),
        None => return None,
        Some(_) => {}
    }
    let mut quoted = false;
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Validates a non-empty path; returns the mailbox without any source route.
pub fn check_path(path: &[u8], utf8: bool) -> Result<&[u8], AddrError> {
    if path.len() + 2 > MAX_PATH {
        return Err(AddrError::TooLong);
    }
    let mailbox = match path.first() {
        Some(b'@') => {
            let colon = memchr::memchr(b':', path).ok_or(AddrError::Syntax)?;
            let route = path.get(..colon).unwrap_or_default();
            for hop in route.split(|b| *b == b',') {
                let domain = hop.strip_prefix(b"@").ok_or(AddrError::Syntax)?;
                check_domain(domain, false)?;
            }
            path.get(colon + 1..).unwrap_or_default()
        }
        _ => path,
    };
    let at = mailbox
        .iter()
        .rposition(|b| *b == b'@')
        .ok_or(AddrError::Syntax)?;
    let (local, domain) = (
        mailbox.get(..at).unwrap_or_default(),
        mailbox.get(at + 1..).unwrap_or_default(),
    );
    if local.len() > MAX_LOCAL || domain.len() > MAX_DOMAIN {
        return Err(AddrError::TooLong);
    }
    check_local(local)?;
    check_domain_or_literal(domain)?;
    if !mailbox.is_ascii() {
        if !utf8 {
            return Err(AddrError::NeedsUtf8);
        }
        std::str::from_utf8(mailbox).map_err(|_| AddrError::Syntax)?;
    }
    Ok(mailbox)
}

/// Byte classes, one table lookup per byte on the hot path.
const ATEXT: u8 = 1; // RFC 5322 3.2.3 atext, plus any non-ASCII byte
const ALNUM: u8 = 2; // Let-dig
const UTF8: u8 = 4; // non-ASCII: U-label bytes when SMTPUTF8 is allowed

// Indexing in a const initialiser is checked at compile time: it cannot
// panic; and `b < 256`, so `b as u8` keeps every bit.
#[allow(clippy::indexing_slicing, clippy::cast_possible_truncation)]
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() {
            t[b] = ATEXT | ALNUM;
        } else if c >= 0x80 {
            t[b] = ATEXT | UTF8;
        }
        b += 1;
    }
    let specials = b"!#$%&'*+-/=?^_`{|}~";
    let mut i = 0;
    while i < specials.len() {
        t[specials[i] as usize] |= ATEXT;
        i += 1;
    }
    t
};

#[inline]
fn class(b: u8) -> u8 {
    CLASS.get(usize::from(b)).copied().unwrap_or(0)
}

fn check_local(local: &[u8]) -> Result<(), AddrError> {
    if let Some(inner) = local
        .strip_prefix(b"\"")
        .and_then(|l| l.strip_suffix(b"\""))
    {
        // Quoted-string: qtextSMTP or quoted-pairSMTP.
        let mut i = 0;
        while let Some(&b) = inner.get(i) {
            match b {
                b'\\' => {
                    let next = inner.get(i + 1).ok_or(AddrError::Syntax)?;
                    if !(32..=126).contains(next) {
                        return Err(AddrError::Syntax);
                    }
                    i += 2;
                }
                b'"' => return Err(AddrError::Syntax),
                32..=126 | 0x80..=0xff => i += 1,
                _ => return Err(AddrError::Syntax),
            }
        }
        return Ok(());
    }
    // Dot-string: atoms of atext separated by single dots, in one pass;
    // the common byte (atext) is tested first and costs one lookup.
    let mut after_dot = true; // the start behaves like a dot: no dot may follow
    for &b in local {
        if class(b) & ATEXT != 0 {
            after_dot = false;
        } else if b == b'.' && !after_dot {
            after_dot = true;
        } else {
            return Err(AddrError::Syntax);
        }
    }
    if after_dot {
        return Err(AddrError::Syntax);
    }
    Ok(())
}

fn check_domain_or_literal(domain: &[u8]) -> Result<(), AddrError> {
    match domain.strip_prefix(b"[").and_then(|d| d.strip_suffix(b"]")) {
        Some(lit) => check_address_literal(lit),
        None => check_domain(domain, true),
    }
}

/// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str],
/// at most 63 octets a label, checked in one pass. U-labels (non-ASCII) pass
/// when `allow_utf8`; whether SMTPUTF8 was declared is checked later.
fn check_domain(domain: &[u8], allow_utf8: bool) -> Result<(), AddrError> {
    let let_dig = ALNUM | if allow_utf8 { UTF8 } else { 0 };
    // A label: 1 to 63 octets, not ending in a hyphen (its first octet is
    // a letter or digit: a hyphen there is refused below).
    let label_fine = |l: &[u8]| (1..=63).contains(&l.len()) && l.last() != Some(&b'-');
    let mut start = 0; // where the current label begins
    for (i, &b) in domain.iter().enumerate() {
        // The common byte, a letter or digit, costs one lookup; lengths are
        // checked once per label.
        if class(b) & let_dig != 0 {
            continue;
        }
        match b {
            b'.' if label_fine(domain.get(start..i).unwrap_or_default()) => start = i + 1,
            b'-' if i > start => {}
            _ => return Err(AddrError::Syntax),
        }
    }
    if !label_fine(domain.get(start..).unwrap_or_default()) {
        return Err(AddrError::Syntax);
    }
    Ok(())
}

/// IPv4-address-literal = Snum 3("." Snum); Snum = 1*3DIGIT, 0..=255
/// (RFC 5321 4.1.3; leading zeros allowed, unlike `Ipv4Addr::from_str`).
fn is_ipv4_literal(lit: &[u8]) -> bool {
    let mut parts = 0;
    let ok = lit.split(|b| *b == b'.').all(|snum| {
        parts += 1;
        (1..=3).contains(&snum.len())
            && snum.iter().all(u8::is_ascii_digit)
            && snum.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')) <= 255
    });
    ok && parts == 4
}

/// IPv4, `IPv6:` + IPv6, or General-address-literal (tag ":" dcontent).
fn check_address_literal(lit: &[u8]) -> Result<(), AddrError> {
    let text = std::str::from_utf8(lit).map_err(|_| AddrError::Syntax)?;
    if is_ipv4_literal(lit) {
        return Ok(());
    }
    if let Some(v6) = text.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
        let rest = text.get(v6.len()..).unwrap_or_default();
        return rest
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| AddrError::Syntax);
    }
    match text.split_once(':') {
        Some((tag, content))
            if !tag.is_empty()
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(AddrError::Syntax),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes() {
        let ok: &[&str] = &[
            "a@b",
            "first.last@sub.example.com",
            "!#$%&'*+-/=?^_`{|}~@x.example",
            "\"quoted local\"@x.example",
            "\"q\\\"uote\"@x.example",
            "a@[192.0.2.1]",
            "a@[01.2.3.004]",
            "a@[IPv6:2001:db8::1]",
            "a@[x-tag:stuff]",
            "@r1.example,@r2.example:a@b.example",
        ];
        for m in ok {
            assert!(check_path(m.as_bytes(), false).is_ok(), "{m}");
        }
        let bad: &[&str] = &[
            "a",
            "@b",
            "a@",
            ".a@b",
            "a.@b",
            "a..b@c",
            "a b@c",
            "a@-b",
            "a@b-",
            "a@b..c",
            "a@[1.2.3]",
            "a@[1.2.3.256]",
            "a@[1.2.3.4.5]",
            "a@[1..3.4]",
            "a@[IPv6:zz]",
            "\"unterminated@b",
            "a\x00b@c",
            "@r1:",
            "a@b.-c",
            "a@b-.c",
            &format!("a@{}.test", "l".repeat(64)),
            "r1:a@b",
        ];
        for m in bad {
            assert_eq!(
                check_path(m.as_bytes(), false),
                Err(AddrError::Syntax),
                "{m:?}"
            );
        }
        assert_eq!(check_path(b"@r.example:a@b", false), Ok(&b"a@b"[..]));
        let long_local = format!("{}@b", "a".repeat(65));
        assert_eq!(
            check_path(long_local.as_bytes(), false),
            Err(AddrError::TooLong)
        );
        let long_path = format!("a@{}", "b.".repeat(130));
        assert_eq!(
            check_path(long_path.as_bytes(), false),
            Err(AddrError::TooLong)
        );
        assert_eq!(
            check_path("ü@x".as_bytes(), false),
            Err(AddrError::NeedsUtf8)
        );
        assert!(check_path("ü@bücher.example".as_bytes(), true).is_ok());
        assert_eq!(check_path(b"\xff@x", true), Err(AddrError::Syntax));
    }

    /// The plain definitions the one-pass checks must agree with.
    fn naive_dot_string(local: &[u8]) -> bool {
        let atext =
            |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(b) || *b >= 0x80;
        local
            .split(|b| *b == b'.')
            .all(|a| !a.is_empty() && a.iter().all(atext))
    }

    fn naive_domain(d: &[u8], utf8: bool) -> bool {
        let alnum = |b: &u8| b.is_ascii_alphanumeric() || (utf8 && *b >= 0x80);
        !d.is_empty()
            && d.split(|b| *b == b'.').all(|l| {
                l.len() <= 63
                    && l.first().is_some_and(alnum)
                    && l.last().is_some_and(alnum)
                    && l.iter().all(|b| alnum(b) || *b == b'-')
            })
    }

    proptest::proptest! {
        #[test]
        fn one_pass_checks_match_the_definitions(
            v in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(b'.'), proptest::strategy::Just(b'-'), proptest::strategy::Just(b'a'),
                proptest::strategy::Just(b'9'), proptest::strategy::Just(b'!'), proptest::strategy::Just(0xc3u8),
                proptest::strategy::Just(b' '), proptest::strategy::Just(b'"'),
            ], 0..80),
            utf8 in proptest::bool::ANY,
        ) {
            proptest::prop_assert_eq!(check_domain(&v, utf8).is_ok(), naive_domain(&v, utf8));
            if v.first() != Some(&b'"') {
                proptest::prop_assert_eq!(check_local(&v).is_ok(), naive_dot_string(&v));
            }
        }
    }

    #[test]
    fn brackets() {
        assert_eq!(closing_bracket(b"a@b>"), Some(3));
        assert_eq!(closing_bracket(b"\"a>\"@b> X"), Some(6));
        assert_eq!(closing_bracket(b"\"a\\\">\"@b>"), Some(8));
        assert_eq!(closing_bracket(b"a@b"), None);
    }
}
