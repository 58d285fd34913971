//! Address and domain patterns: `*` and `?` globs, case-insensitive.
//!
//! Rules are asked about every MAIL and RCPT, and a rule that does not
//! match is the common case, so the shapes people write — an exact address,
//! `prefix*`, `*suffix`, `prefix*suffix`, `*` — are compared as ASCII bytes
//! without converting the argument (a few instructions for a mismatch).
//! Anything else goes to `wildmatch` on the argument as text.

use wildmatch::WildMatch;

/// A compiled pattern.
#[derive(Debug, Clone)]
pub enum Glob {
    /// `*`: everything.
    Any,
    /// No wildcard.
    Exact(Box<[u8]>),
    /// `lit*`.
    Prefix(Box<[u8]>),
    /// `*lit`.
    Suffix(Box<[u8]>),
    /// `a*b`.
    PrefixSuffix(Box<[u8]>, Box<[u8]>),
    /// Any other shape, or non-ASCII.
    General(WildMatch),
}

impl Glob {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Self {
        let simple = pattern.is_ascii() && !pattern.contains('?');
        let parts: Vec<&str> = pattern.split('*').collect();
        let b = |s: &str| s.to_ascii_lowercase().into_bytes().into_boxed_slice();
        match parts.as_slice() {
            _ if !simple => Self::General(WildMatch::new_case_insensitive(pattern)),
            [exact] => Self::Exact(b(exact)),
            ["", ""] => Self::Any,
            ["", lit] => Self::Suffix(b(lit)),
            [lit, ""] => Self::Prefix(b(lit)),
            [a, z] => Self::PrefixSuffix(b(a), b(z)),
            _ => Self::General(WildMatch::new_case_insensitive(pattern)),
        }
    }

    /// What any argument this pattern matches must look like, as far as
    /// one compare each can tell: `(least length, first byte, second byte,
    /// last byte)`, bytes lower-cased, 0 where any byte will do.
    pub fn shape(&self) -> (usize, u8, u8, u8) {
        let at = |p: &[u8], i: usize| p.get(i).copied().unwrap_or(0);
        let last = |p: &[u8]| p.last().copied().unwrap_or(0);
        match self {
            Self::Any | Self::General(_) => (0, 0, 0, 0),
            Self::Exact(p) => (p.len(), at(p, 0), at(p, 1), last(p)),
            Self::Prefix(p) => (p.len(), at(p, 0), at(p, 1), 0),
            Self::Suffix(p) => (p.len(), 0, 0, last(p)),
            Self::PrefixSuffix(a, z) => (a.len() + z.len(), at(a, 0), at(a, 1), last(z)),
        }
    }

    /// Whether `arg` matches.
    pub fn matches(&self, arg: &[u8]) -> bool {
        let starts = |p: &[u8]| {
            arg.get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        let ends = |p: &[u8]| {
            arg.len() >= p.len()
                && arg
                    .get(arg.len() - p.len()..)
                    .is_some_and(|t| t.eq_ignore_ascii_case(p))
        };
        match self {
            Self::Any => true,
            Self::Exact(p) => arg.eq_ignore_ascii_case(p),
            Self::Prefix(p) => starts(p),
            Self::Suffix(p) => ends(p),
            Self::PrefixSuffix(a, z) => arg.len() >= a.len() + z.len() && starts(a) && ends(z),
            Self::General(w) => w.matches(&String::from_utf8_lossy(arg)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shapes() {
        assert!(Glob::new("*").matches(b"") && Glob::new("*").matches(b"x"));
        for (p, yes, no) in [
            ("a@b.test", "A@B.test", "a@b.tes"),
            ("bounce-*", "Bounce-1@x", "bounc"),
            (
                "*@example.invalid",
                "x@EXAMPLE.invalid",
                "x@example.invalid.org",
            ),
            ("bounce-*@x.test", "bounce-9@x.test", "bounce@x.test"),
            ("a*b*c", "aXbYc", "acb"),
            ("?@x", "a@x", "ab@x"),
            ("*.ünï", "a.ÜNÏ", "a.uni"),
        ] {
            let g = Glob::new(p);
            assert!(g.matches(yes.as_bytes()), "{p} ~ {yes}");
            assert!(!g.matches(no.as_bytes()), "{p} !~ {no}");
        }
        assert!(matches!(Glob::new("a*b"), Glob::PrefixSuffix(..)));
        assert!(matches!(Glob::new("*x"), Glob::Suffix(_)));
        // "ab*ab" must not match "ab": prefix and suffix may not overlap.
        assert!(!Glob::new("ab*ab").matches(b"ab"));
    }

    proptest! {
        /// The fast shapes agree with wildmatch, the oracle.
        #[test]
        fn agrees_with_wildmatch(
            pattern in "[ab@.*]{0,6}",
            text in "[abAB@.]{0,8}",
        ) {
            let oracle = WildMatch::new_case_insensitive(&pattern).matches(&text);
            prop_assert_eq!(Glob::new(&pattern).matches(text.as_bytes()), oracle);
        }
    }
}
