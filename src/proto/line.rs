//! Zero-copy command-line framing (RFC 5321 2.3.8, 4.1.1, 4.5.3.1.4).
//!
//! Owns: finding the next command line in the unconsumed input. Lines are
//! borrowed slices of the caller's buffer; nothing is copied or allocated.
//! A line ends at LF; the LF must follow a CR (bare LF is reported, never
//! executed). A partial line longer than the cap is reported so the caller
//! can skip it instead of buffering it.

/// What the start of the input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its CRLF; `consumed` includes the CRLF.
    Line {
        /// The line, CRLF excluded.
        line: &'a [u8],
        /// Bytes it spans, CRLF included.
        consumed: usize,
    },
    /// A line ended by LF without CR before it.
    BareLf {
        /// Bytes up to and including the LF.
        consumed: usize,
    },
    /// No line end yet and fewer than `cap` bytes: wait for more input.
    Partial,
    /// No line end within `cap` bytes: the caller consumes `consumed` bytes
    /// and discards input up to the next LF.
    Overflow {
        /// Bytes to drop now (all of the input).
        consumed: usize,
    },
    /// A complete line longer than `cap`: consumed whole, never executed.
    /// (The same verdict [`Frame::Overflow`] reaches when it arrives in pieces.)
    TooLong {
        /// Bytes it spans, LF included.
        consumed: usize,
    },
}

/// Frames the next line of `input`. `cap` is the longest line worth
/// buffering, CRLF included.
pub fn next_line(input: &[u8], cap: usize) -> Frame<'_> {
    match memchr::memchr(b'\n', input) {
        Some(lf) if lf >= cap => Frame::TooLong { consumed: lf + 1 },
        Some(lf) => match lf
            .checked_sub(1)
            .and_then(|cr| input.get(cr).map(|b| (cr, *b)))
        {
            Some((cr, b'\r')) => Frame::Line {
                line: input.get(..cr).unwrap_or_default(),
                consumed: lf + 1,
            },
            _ => Frame::BareLf { consumed: lf + 1 },
        },
        None if input.len() >= cap => Frame::Overflow {
            consumed: input.len(),
        },
        None => Frame::Partial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(
            next_line(b"NOOP\r\nQUIT\r\n", 512),
            Frame::Line {
                line: b"NOOP",
                consumed: 6
            }
        );
        assert_eq!(
            next_line(b"\r\n", 512),
            Frame::Line {
                line: b"",
                consumed: 2
            }
        );
        assert_eq!(next_line(b"NOOP\n", 512), Frame::BareLf { consumed: 5 });
        assert_eq!(next_line(b"\n", 512), Frame::BareLf { consumed: 1 });
        assert_eq!(next_line(b"NOOP\r", 512), Frame::Partial);
        assert_eq!(next_line(b"", 512), Frame::Partial);
        assert_eq!(next_line(b"abcd", 4), Frame::Overflow { consumed: 4 });
        assert_eq!(
            next_line(b"abc\r\n", 5),
            Frame::Line {
                line: b"abc",
                consumed: 5
            }
        );
        assert_eq!(next_line(b"abcd\r\n", 5), Frame::TooLong { consumed: 6 });
        assert_eq!(next_line(b"abcdef\n", 4), Frame::TooLong { consumed: 7 });
    }
}
