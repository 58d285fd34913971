//! The verify sink (`--verify`): checks the integrity headers smtpload puts
//! in every message, so a load run through an MTA under test shows whether
//! it lost, duplicated or mangled anything (dot-stuffing, 8-bit, wrapping).
//!
//! smtpload writes `X-Smtpload-Run: <hex>`, `X-Smtpload-Seq: <decimal>` and
//! `X-Smtpload-Hash: crc32:<hex>` (CRC-32 of the body: everything after the
//! first empty line). Headers an MTA adds (Received:) do not matter; a body
//! that differs does. Sequence numbers are tracked per run in a bit set:
//! a number seen twice is a duplicate, a gap below the highest is lost.
//! Only the header block is copied (at most [`MAX_HEADER`] bytes); the body
//! is hashed as it streams past.

use super::{Discard, SessionId, Sink, Summary, Verdict};
use memchr::memmem;
use std::collections::HashMap;

/// Header blocks longer than this are not searched: the message counts as
/// unverifiable.
pub const MAX_HEADER: usize = 64 * 1024;
/// Sequence numbers above this are not tracked (a bit set of 4 MiB), and at
/// most [`MAX_RUNS`] runs are: a client cannot make the server allocate more
/// than 64 MiB for the bit sets however it picks its headers.
const MAX_SEQ: u64 = 1 << 25;
const MAX_RUNS: usize = 16;

#[derive(Default)]
struct Msg {
    head: Vec<u8>,
    in_head: bool,
    run: Option<u64>,
    seq: Option<u64>,
    want: Option<u32>,
    crc: crc32fast::Hasher,
}

/// Sequence numbers seen in one run.
#[derive(Default)]
struct Seen {
    bits: Vec<u64>,
    unique: u64,
    max: Option<u64>,
}

impl Seen {
    /// Marks `seq`; false if it was already there.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let Some(w) = self.bits.get_mut(word) else {
            return false;
        };
        if *w & (1 << bit) != 0 {
            return false;
        }
        *w |= 1 << bit;
        self.unique += 1;
        self.max = Some(self.max.map_or(seq, |m| m.max(seq)));
        true
    }

    fn lost(&self) -> u64 {
        self.max.map_or(0, |m| m + 1 - self.unique)
    }
}

/// Counts like [`Discard`] and checks every message it is given.
#[derive(Default)]
pub struct Verify {
    /// What a discard sink would count.
    pub counts: Discard,
    /// Messages whose body matched their hash.
    pub intact: u64,
    /// Messages whose body did not match.
    pub corrupted: u64,
    /// Sequence numbers seen more than once.
    pub duplicated: u64,
    /// Messages without (readable) smtpload headers.
    pub unverifiable: u64,
    sessions: HashMap<SessionId, Msg>,
    runs: HashMap<u64, Seen>,
}

impl Verify {
    /// Sequence numbers missing below the highest one seen, over all runs.
    pub fn lost(&self) -> u64 {
        self.runs.values().map(Seen::lost).sum()
    }

    fn parse_head(m: &mut Msg, head: &[u8]) {
        for line in head.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let (name, value) = line.split_at(colon);
            let value = std::str::from_utf8(&value[1..]).unwrap_or("").trim();
            if name.eq_ignore_ascii_case(b"X-Smtpload-Seq") {
                m.seq = value.parse().ok();
            } else if name.eq_ignore_ascii_case(b"X-Smtpload-Run") {
                m.run = u64::from_str_radix(value, 16).ok();
            } else if name.eq_ignore_ascii_case(b"X-Smtpload-Hash") {
                m.want = value
                    .strip_prefix("crc32:")
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
            }
        }
    }
}

impl Sink for Verify {
    fn rcpt(&mut self, id: SessionId, forward_path: &[u8]) {
        self.counts.rcpt(id, forward_path);
    }

    fn begin(&mut self, id: SessionId) {
        let m = self.sessions.entry(id).or_default();
        m.head.clear();
        m.in_head = true;
        m.run = None;
        m.seq = None;
        m.want = None;
        m.crc = crc32fast::Hasher::new();
    }

    fn body(&mut self, id: SessionId, chunk: &[u8]) {
        self.counts.body(id, chunk);
        let Some(m) = self.sessions.get_mut(&id) else {
            return;
        };
        if !m.in_head {
            m.crc.update(chunk);
            return;
        }
        // The blank line may straddle two chunks: search from 3 bytes back.
        let from = m.head.len().saturating_sub(3);
        m.head.extend_from_slice(chunk);
        if let Some(i) = memmem::find(&m.head[from..], b"\r\n\r\n") {
            let end = from + i + 4;
            let head = std::mem::take(&mut m.head);
            Self::parse_head(m, &head[..end]);
            m.crc.update(&head[end..]);
            m.head = head;
            m.head.clear();
            m.in_head = false;
        } else if m.head.len() > MAX_HEADER {
            m.head.clear();
            m.in_head = false;
        }
    }

    fn end(&mut self, id: SessionId) -> Verdict {
        self.counts.end(id);
        let Some(m) = self.sessions.get_mut(&id) else {
            self.unverifiable += 1;
            return Verdict::Accepted;
        };
        let crc = std::mem::take(&mut m.crc).finalize();
        match (m.seq, m.want, m.in_head) {
            (Some(seq), Some(want), false) if seq <= MAX_SEQ => {
                if crc == want {
                    self.intact += 1;
                } else {
                    self.corrupted += 1;
                }
                let run = m.run.unwrap_or(0);
                let tracked = self.runs.len() < MAX_RUNS || self.runs.contains_key(&run);
                if tracked && !self.runs.entry(run).or_default().mark(seq) {
                    self.duplicated += 1;
                }
            }
            _ => self.unverifiable += 1,
        }
        m.in_head = false;
        Verdict::Accepted
    }

    fn abort(&mut self, id: SessionId) {
        if let Some(m) = self.sessions.get_mut(&id) {
            m.head.clear();
            m.in_head = false;
        }
    }

    fn closed(&mut self, id: SessionId) {
        self.sessions.remove(&id);
    }
}

impl Summary for Verify {
    fn summary(&self) -> String {
        format!(
            "  verify         intact={} corrupted={} duplicated={} lost={} unverifiable={}\n",
            self.intact,
            self.corrupted,
            self.duplicated,
            self.lost(),
            self.unverifiable
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(run: &str, seq: u64, body: &[u8], claimed: u32) -> Vec<u8> {
        let mut m = format!(
            "Received: from relay\r\nX-Smtpload-Run: {run}\r\nX-Smtpload-Seq: {seq:020}\r\nX-Smtpload-Hash: crc32:{claimed:08x}\r\nSubject: t\r\n\r\n"
        )
        .into_bytes();
        m.extend_from_slice(body);
        m
    }

    fn deliver(v: &mut Verify, id: SessionId, m: &[u8], piece: usize) {
        v.begin(id);
        for c in m.chunks(piece) {
            v.body(id, c);
        }
        v.end(id);
    }

    #[test]
    fn counts_intact_corrupted_duplicated_lost() {
        let body = b"hello\r\n.world\r\n";
        let good = crc32fast::hash(body);
        let mut v = Verify::default();
        for piece in [1, 2, 3, 5, 1000] {
            let mut v1 = Verify::default();
            deliver(&mut v1, 1, &msg("ab", 0, body, good), piece);
            assert_eq!(
                (v1.intact, v1.corrupted, v1.unverifiable),
                (1, 0, 0),
                "piece {piece}"
            );
        }
        deliver(&mut v, 1, &msg("ab", 0, body, good), 7);
        deliver(&mut v, 2, &msg("ab", 1, b"hellO\r\n.world\r\n", good), 7);
        deliver(&mut v, 1, &msg("ab", 1, body, good), 7);
        deliver(&mut v, 1, &msg("ab", 4, body, good), 7);
        deliver(&mut v, 1, &msg("cd", 0, body, good), 7);
        deliver(&mut v, 1, b"Subject: plain\r\n\r\nno headers\r\n", 7);
        assert_eq!(v.intact, 4);
        assert_eq!(v.corrupted, 1);
        assert_eq!(v.duplicated, 1);
        assert_eq!(v.lost(), 2, "seq 2 and 3 of run ab");
        assert_eq!(v.unverifiable, 1);
        assert_eq!(v.counts.messages, 6);
        assert!(v
            .summary()
            .contains("intact=4 corrupted=1 duplicated=1 lost=2 unverifiable=1"));
    }
}
