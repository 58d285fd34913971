//! DATA end-of-data detection and dot-unstuffing (RFC 5321 4.1.1.4, 4.5.2).
//!
//! Owns: the only state that spans reads inside DATA — whether the next byte
//! starts a line. Never copies: the body is handed out as borrowed runs of the
//! caller's buffer, with each stuffed leading dot skipped between two runs.
//!
//! Policy (SMTP smuggling, see README "Line endings"): a line ends only at
//! CRLF. Bare LF and bare CR are ordinary body bytes, so `LF.LF`, `LF.CRLF`,
//! `CR.CRLF` and `.CR CR LF` never end the data and a dot after a bare LF is
//! not a stuffed dot. Only `CRLF.CRLF` ends DATA, and that first CRLF belongs
//! to the body. The first body line starts right after 354.
//!
//! Fast path: `memmem` for `CRLF.` skips whole runs of lines at once; bytes
//! between two hits are body without any dot at a line start.

use memchr::memmem;
use std::sync::LazyLock;

static CRLF_DOT: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\r\n."));

/// Result of one [`Unstuffer::scan`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of the input that were used; the rest (at most `.\r` or `\r\n`)
    /// must be offered again with more input appended.
    pub consumed: usize,
    /// True when `consumed` ends with the terminating `.CRLF`.
    pub end: bool,
}

/// Streaming end-of-data finder and unstuffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unstuffer {
    at_line_start: bool,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl Unstuffer {
    /// A fresh scanner: the first body byte is at a line start.
    pub const fn new() -> Self {
        Self {
            at_line_start: true,
        }
    }

    /// Scans `input`, calling `emit` with runs of unstuffed body bytes (all
    /// borrowed from `input`), until the end-of-data line or the end of what
    /// can be decided. Unconsumed bytes must be offered again, prefixed to the
    /// next read.
    // Measured (callgrind, pipelined 1 KiB): once LLVM stopped inlining it
    // into the session's input loop, a message cost ~120 instructions more.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    pub fn scan(&mut self, input: &[u8], mut emit: impl FnMut(&[u8])) -> Scan {
        let mut pos = 0;
        if self.at_line_start {
            match line_start(input) {
                LineStart::End => {
                    return Scan {
                        consumed: 3,
                        end: true,
                    }
                }
                LineStart::Undecided => {
                    return Scan {
                        consumed: 0,
                        end: false,
                    }
                }
                LineStart::Stuffed => pos = 1,
                LineStart::Plain => {}
            }
            self.at_line_start = false;
        }
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            if let Some(i) = find_crlf_dot(rest) {
                // Emit through the CRLF; the dot after it starts a line.
                let run = i + 2;
                emit(rest.get(..run).unwrap_or_default());
                pos += run;
                match line_start(input.get(pos..).unwrap_or_default()) {
                    LineStart::End => {
                        self.at_line_start = true;
                        return Scan {
                            consumed: pos + 3,
                            end: true,
                        };
                    }
                    LineStart::Undecided => {
                        self.at_line_start = true;
                        return Scan {
                            consumed: pos,
                            end: false,
                        };
                    }
                    // A leading dot on any other line is stuffing: drop it.
                    LineStart::Stuffed => pos += 1,
                    LineStart::Plain => {}
                }
            } else {
                // Hold back a trailing CR or CRLF: with the next read it may
                // become the CRLF before a dot.
                let hold = if rest.ends_with(b"\r\n") {
                    2
                } else {
                    usize::from(rest.ends_with(b"\r"))
                };
                let run = rest.len() - hold;
                if run > 0 {
                    emit(rest.get(..run).unwrap_or_default());
                }
                return Scan {
                    consumed: pos + run,
                    end: false,
                };
            }
        }
    }
}

/// What the bytes at a line start say.
enum LineStart {
    /// `.CRLF`: the end of the data.
    End,
    /// `.`, `.CR` or nothing yet: wait for more input.
    Undecided,
    /// A dot followed by anything else: stuffing, to be dropped.
    Stuffed,
    /// No dot.
    Plain,
}

#[inline]
fn line_start(rest: &[u8]) -> LineStart {
    match rest {
        [b'.', b'\r', b'\n', ..] => LineStart::End,
        [] | [b'.'] | [b'.', b'\r'] => LineStart::Undecided,
        [b'.', ..] => LineStart::Stuffed,
        _ => LineStart::Plain,
    }
}

/// Finds `CRLF.`. With short stuffed lines hits are a few bytes apart and
/// memmem's start-up cost would dominate (3x slower than a byte loop on
/// `..CRLF` lines), so the first bytes are looked at directly.
#[inline]
fn find_crlf_dot(hay: &[u8]) -> Option<usize> {
    const NEAR: usize = 4;
    let near = hay.get(..NEAR + 2).unwrap_or(hay);
    if let Some(i) = near
        .windows(3)
        .position(|w| matches!(w, [b'\r', b'\n', b'.']))
    {
        return Some(i);
    }
    let skip = near.len().saturating_sub(2);
    CRLF_DOT
        .find(hay.get(skip..).unwrap_or_default())
        .map(|i| i + skip)
}

/// Dot-stuffs `body` for transmission after DATA and appends the terminator
/// (RFC 5321 4.5.2). A body that does not end in CRLF gets one. For clients and
/// tests; the server never stuffs.
pub fn stuff(body: &[u8], out: &mut Vec<u8>) {
    // Every iteration starts at a line start.
    let mut rest = body;
    while !rest.is_empty() {
        if rest.first() == Some(&b'.') {
            out.push(b'.');
        }
        let line = memmem::find(rest, b"\r\n").map_or(rest.len(), |i| i + 2);
        let (head, tail) = rest.split_at(line);
        out.extend_from_slice(head);
        if !head.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        rest = tail;
    }
    out.extend_from_slice(b".\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The byte-at-a-time reference (RFC 5321 4.5.2) and the split feeder
    // are the fuzz target's, so the two check the same thing.
    use crate::fuzzing::{unstuff_naive as oracle, unstuff_split as run_split};

    fn check(input: &[u8]) {
        let want = oracle(input);
        assert_eq!(run_split(input, &[]), want, "whole: {input:?}");
        for cut in 0..=input.len() {
            assert_eq!(run_split(input, &[cut]), want, "cut {cut}: {input:?}");
        }
        let every: Vec<usize> = (0..=input.len()).collect();
        assert_eq!(run_split(input, &every), want, "bytewise: {input:?}");
    }

    #[test]
    fn edge_cases_against_oracle() {
        let seeds: &[&[u8]] = &[
            b".\r\n",
            b"..\r\n.\r\n",
            b".x\r\n.\r\n",
            b"a\r\n.\r\n",
            b"a\r\n..\r\n.\r\n",
            b"\r\n.\r\n",
            b"a\n.\na\r\n.\r\n",
            b"a\n.\r\na\r\n.\r\n",
            b"a\r\n.\na\r\n.\r\n",
            b"a\r.\r\na\r\n.\r\n",
            b".\r\r\n.\r\n",
            b"a\r\n.\r\r\n.\r\n",
            b"\r\r\n.\r\n",
            b"\r\n\r\n.\r\n",
            b"x\r\n.\r\nMAIL FROM:<a@b>\r\n",
            b"no end",
            b"no end\r\n.",
            b"no end\r\n.\r",
            b"\x00\xff\x80.\r\n.\r\n",
        ];
        for seed in seeds {
            check(seed);
            // Pad in front to move the interesting bytes across alignments and
            // across the near/far boundary of `find_crlf_dot`.
            for pad in 1..40 {
                let mut v = vec![b'p'; pad];
                v.extend_from_slice(b"\r\n");
                v.extend_from_slice(seed);
                check(&v);
            }
        }
    }

    #[test]
    fn exact_bodies() {
        let mut body = Vec::new();
        let mut u = Unstuffer::new();
        let s = u.scan(b"..a\r\nb\r\n.\r\nNEXT", |r| body.extend_from_slice(r));
        assert_eq!(
            s,
            Scan {
                consumed: 11,
                end: true
            }
        );
        assert_eq!(body, b".a\r\nb\r\n");

        let mut u = Unstuffer::new();
        let s = u.scan(b".\r\n", |_| panic!("empty message has no body"));
        assert_eq!(
            s,
            Scan {
                consumed: 3,
                end: true
            }
        );

        // Smuggling vectors never end the data.
        for v in [&b"a\n.\nb"[..], b"a\n.\r\nb", b"a\r\n.\nb", b"a\r.\r\nb"] {
            let mut u = Unstuffer::new();
            assert!(!u.scan(v, |_| {}).end, "{v:?}");
        }
    }

    #[test]
    fn stuff_round_trips() {
        let mut out = Vec::new();
        stuff(b".a\r\n..b\r\nc", &mut out);
        assert_eq!(out, b"..a\r\n...b\r\nc\r\n.\r\n");
        assert_eq!(oracle(&out).unwrap().0, b".a\r\n..b\r\nc\r\n");
    }

    fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
        // SMTP's alphabet for this scanner: mostly CR, LF, dot, with filler.
        prop::collection::vec(
            prop_oneof![
                4 => Just(b'\r'),
                4 => Just(b'\n'),
                4 => Just(b'.'),
                1 => Just(b'a'),
                1 => any::<u8>(),
            ],
            0..64,
        )
    }

    proptest! {
        #[test]
        fn matches_oracle_on_any_split(input in smtp_bytes(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            prop_assert_eq!(run_split(&input, &cuts), oracle(&input));
        }

        #[test]
        fn stuffed_bodies_come_back(body in prop::collection::vec(any::<u8>(), 0..256), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            let mut wire = Vec::new();
            stuff(&body, &mut wire);
            let (got, used) = run_split(&wire, &cuts).expect("terminator");
            prop_assert_eq!(used, wire.len());
            let mut want = body.clone();
            if !want.is_empty() && !want.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            prop_assert_eq!(got, want);
        }
    }
}
