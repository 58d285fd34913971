//! The verify sink (`--verify`): checks the integrity headers smtpload puts
//! in every message, so a load run through an MTA under test shows whether
//! it lost, duplicated or mangled anything (dot-stuffing, 8-bit, wrapping),
//! and how long each message took to come through.
//!
//! smtpload writes `X-Smtpload-Run: <hex>`, `X-Smtpload-Seq: <decimal>`,
//! `X-Smtpload-Sent: <ns since the Unix epoch>` (when it handed the content
//! to the server) and `X-Smtpload-Hash: crc32:<hex>` (CRC-32 of the body:
//! everything after the first empty line). Headers an MTA adds (Received:)
//! do not matter; a body that differs does. Sequence numbers are tracked per
//! run in a bit set: a number seen twice is a duplicate. Transit time is the
//! wall clock at the end of data minus the stamp (same host: one clock).
//!
//! Losses: given the run's summary ([`Verify::expect`], from smtpload's
//! `--summary`), every acknowledged sequence number that never arrived is
//! missing — lost once the sink has waited long enough ([`Verify::finish`]
//! with `lost`), else still in flight. Without a summary only gaps below the
//! highest number seen can be counted. Only the header block is copied (at
//! most [`MAX_HEADER`] bytes); the body is hashed as it streams past.

use super::{Discard, Merge, SessionId, Sink, Summary, Verdict};
use crate::run_summary::RunSummary;
use crate::stats::{histogram, histogram_json, micros, spread_line};
use hdrhistogram::Histogram;
use memchr::memmem;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

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
    /// `X-Smtpload-Sent`, nanoseconds since the epoch.
    sent: Option<u64>,
    crc: crc32fast::Hasher,
}

/// Sequence numbers seen in one run.
#[derive(Default, Clone)]
struct Seen {
    bits: Vec<u64>,
    unique: u64,
    max: Option<u64>,
    /// First and last arrival, since the epoch.
    first: Option<Duration>,
    last: Option<Duration>,
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

    fn has(&self, seq: u64) -> bool {
        self.bits
            .get((seq / 64) as usize)
            .is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// Adds another loop's numbers; returns how many both had (those are
    /// duplicates neither loop could see alone).
    fn union(&mut self, other: &Seen) -> u64 {
        if self.bits.len() < other.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        let mut both = 0;
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            both += u64::from((*a & b).count_ones());
            *a |= b;
        }
        self.unique += other.unique - both;
        self.max = self.max.max(other.max);
        self.first = match (self.first, other.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = self.last.max(other.last);
        both
    }

    fn gaps(&self) -> u64 {
        self.max.map_or(0, |m| m + 1 - self.unique)
    }
}

/// A run whose summary is known.
#[derive(Clone)]
struct Expected {
    summary: RunSummary,
    /// When the summary was read, since the epoch.
    known_at: Duration,
    /// Acknowledged messages that arrived.
    delivered: u64,
}

/// How a run with a known summary stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// No summary yet, or messages still missing and arriving.
    Waiting,
    /// Every acknowledged message arrived.
    Complete,
    /// Messages are missing and none arrived for the linger time.
    Quiet,
}

/// Counts like [`Discard`] and checks every message it is given.
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
    /// Transit time of every verified message, in microseconds.
    pub transit: Histogram<u64>,
    /// The same since [`Verify::take_interval`] was last called.
    interval: Histogram<u64>,
    /// Stamps later than the arrival (clocks apart): recorded as 0.
    pub skewed: u64,
    sessions: HashMap<SessionId, Msg>,
    runs: HashMap<u64, Seen>,
    expected: Option<Expected>,
    /// Set by [`Verify::finish`]: missing messages count as lost.
    missing_are_lost: bool,
}

impl Default for Verify {
    fn default() -> Self {
        Self {
            counts: Discard::default(),
            intact: 0,
            corrupted: 0,
            duplicated: 0,
            unverifiable: 0,
            transit: histogram(),
            interval: histogram(),
            skewed: 0,
            sessions: HashMap::new(),
            runs: HashMap::new(),
            expected: None,
            missing_are_lost: false,
        }
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default()
}

impl Verify {
    /// Lost messages: with a run summary, acknowledged ones that never
    /// arrived once [`Verify::finish`] said so; for other runs the gaps below
    /// the highest sequence number seen.
    pub fn lost(&self) -> u64 {
        let expected_run = self.expected.as_ref().map(|e| e.summary.run);
        let gaps: u64 = self
            .runs
            .iter()
            .filter(|(run, _)| Some(**run) != expected_run)
            .map(|(_, s)| s.gaps())
            .sum();
        gaps + if self.missing_are_lost {
            self.missing()
        } else {
            0
        }
    }

    /// Acknowledged messages of the expected run that have not arrived
    /// (and have not yet been declared lost).
    pub fn in_flight(&self) -> u64 {
        if self.missing_are_lost {
            0
        } else {
            self.missing()
        }
    }

    /// Acknowledged messages of the expected run that have not arrived.
    fn missing(&self) -> u64 {
        self.expected
            .as_ref()
            .map_or(0, |e| e.summary.acknowledged() - e.delivered)
    }

    /// Messages of the expected run that arrived although the run did not
    /// count them as acknowledged (refused, or timed out at the client).
    pub fn unacknowledged(&self) -> u64 {
        self.expected.as_ref().map_or(0, |e| {
            let unique = self.runs.get(&e.summary.run).map_or(0, |s| s.unique);
            unique - e.delivered
        })
    }

    /// The run's summary is known (read at `now`): from now on its missing
    /// messages are counted exactly.
    pub fn expect(&mut self, summary: RunSummary, now: SystemTime) {
        self.expect_since(summary, since_epoch(now));
    }

    fn expect_since(&mut self, summary: RunSummary, known_at: Duration) {
        let seen = self.runs.entry(summary.run).or_default();
        let delivered = summary
            .acked
            .iter()
            .map(|&(a, b)| (a..=b).filter(|s| seen.has(*s)).count() as u64)
            .sum();
        self.expected = Some(Expected {
            summary,
            known_at,
            delivered,
        });
    }

    /// Whether the expected run is complete, or has been quiet for `linger`.
    pub fn run_state(&self, now: SystemTime, linger: Duration) -> RunState {
        let Some(e) = &self.expected else {
            return RunState::Waiting;
        };
        if e.delivered == e.summary.acknowledged() {
            return RunState::Complete;
        }
        let last = self.runs.get(&e.summary.run).and_then(|s| s.last);
        let since = last.map_or(e.known_at, |l| l.max(e.known_at));
        if since_epoch(now).saturating_sub(since) >= linger {
            RunState::Quiet
        } else {
            RunState::Waiting
        }
    }

    /// The sink stops: messages still missing are lost (`lost`, after the
    /// linger) or were in flight (stopped before that).
    pub fn finish(&mut self, lost: bool) {
        self.missing_are_lost = lost;
    }

    /// The transit times since the last call (for an interval log).
    pub fn take_interval(&mut self) -> Histogram<u64> {
        let h = self.interval.clone();
        self.interval.reset();
        h
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
            } else if name.eq_ignore_ascii_case(b"X-Smtpload-Sent") {
                m.sent = value.parse().ok();
            } else if name.eq_ignore_ascii_case(b"X-Smtpload-Hash") {
                m.want = value
                    .strip_prefix("crc32:")
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
            }
        }
    }

    fn arrived(&mut self, run: u64, seq: u64, sent: Option<u64>, now: Duration) {
        if let Some(sent) = sent {
            let sent = Duration::from_nanos(sent);
            if sent > now {
                self.skewed += 1;
            }
            let us = micros(now.saturating_sub(sent));
            self.transit.saturating_record(us);
            self.interval.saturating_record(us);
        }
        let tracked = self.runs.len() < MAX_RUNS || self.runs.contains_key(&run);
        if !tracked {
            return;
        }
        let seen = self.runs.entry(run).or_default();
        seen.first.get_or_insert(now);
        seen.last = Some(now);
        if !seen.mark(seq) {
            self.duplicated += 1;
        } else if let Some(e) = self.expected.as_mut() {
            if e.summary.run == run && e.summary.contains(seq) {
                e.delivered += 1;
            }
        }
    }

    /// The verify figures as JSON (`smtpsink --json`, key `verify`).
    pub fn figures(&self) -> serde_json::Value {
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let (expected, complete, first, last) = if let Some(e) = &self.expected {
            let seen = self.runs.get(&e.summary.run);
            (
                Some(e.summary.acknowledged()),
                Some(e.delivered == e.summary.acknowledged()),
                secs(seen.and_then(|s| s.first)),
                secs(seen.and_then(|s| s.last)),
            )
        } else {
            let first = self.runs.values().filter_map(|s| s.first).min();
            let last = self.runs.values().filter_map(|s| s.last).max();
            (None, None, secs(first), secs(last))
        };
        serde_json::json!({
            "intact": self.intact,
            "corrupted": self.corrupted,
            "duplicated": self.duplicated,
            "lost": self.lost(),
            "in_flight": self.in_flight(),
            "unacknowledged": self.unacknowledged(),
            "unverifiable": self.unverifiable,
            "expected": expected,
            "complete": complete,
            "run": self.expected.as_ref().map(|e| format!("{:016x}", e.summary.run)),
            "first_arrival_unix": first,
            "last_arrival_unix": last,
            "transit": histogram_json(&self.transit),
            "clock_skewed": self.skewed,
        })
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
        m.sent = None;
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
        let found = (m.seq, m.want, m.in_head, m.run.unwrap_or(0), m.sent);
        m.in_head = false;
        match found {
            (Some(seq), Some(want), false, run, sent) if seq <= MAX_SEQ => {
                if crc == want {
                    self.intact += 1;
                } else {
                    self.corrupted += 1;
                }
                self.arrived(run, seq, sent, since_epoch(SystemTime::now()));
            }
            _ => self.unverifiable += 1,
        }
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

impl Merge for Verify {
    fn snapshot(&self) -> Self {
        Self {
            counts: self.counts,
            intact: self.intact,
            corrupted: self.corrupted,
            duplicated: self.duplicated,
            unverifiable: self.unverifiable,
            transit: self.transit.clone(),
            interval: histogram(),
            skewed: self.skewed,
            sessions: HashMap::new(),
            runs: self.runs.clone(),
            expected: self.expected.clone(),
            missing_are_lost: self.missing_are_lost,
        }
    }

    fn merge(&mut self, other: Self) {
        self.counts.merge(other.counts);
        self.intact += other.intact;
        self.corrupted += other.corrupted;
        self.duplicated += other.duplicated;
        self.unverifiable += other.unverifiable;
        self.skewed += other.skewed;
        // Same fixed bounds on both sides: adding cannot fail.
        let _ = self.transit.add(&other.transit);
        for (run, seen) in other.runs {
            match self.runs.entry(run) {
                Entry::Vacant(v) => {
                    v.insert(seen);
                }
                Entry::Occupied(mut o) => self.duplicated += o.get_mut().union(&seen),
            }
        }
        // Delivered counts again over the union.
        if let Some(e) = self.expected.take().or(other.expected) {
            self.expect_since(e.summary, e.known_at);
        }
        self.missing_are_lost |= other.missing_are_lost;
    }

    fn adopt(&mut self, earlier: &Self) {
        if let (None, Some(e)) = (&self.expected, &earlier.expected) {
            self.expect_since(e.summary.clone(), e.known_at);
        }
        self.missing_are_lost |= earlier.missing_are_lost;
    }
}

impl Summary for Verify {
    fn json(&self) -> Option<(&'static str, serde_json::Value)> {
        Some(("verify", self.figures()))
    }

    fn summary(&self) -> String {
        let mut s = format!(
            "  verify         intact={} corrupted={} duplicated={} lost={} in_flight={} unverifiable={}\n",
            self.intact,
            self.corrupted,
            self.duplicated,
            self.lost(),
            self.in_flight(),
            self.unverifiable
        );
        let h = &self.transit;
        if !h.is_empty() {
            let _ = writeln!(
                s,
                "  transit        {}  (X-Smtpload-Sent to end of data)",
                spread_line(h)
            );
        }
        if let Some(e) = &self.expected {
            let _ = writeln!(
                s,
                "  run {:016x} acknowledged={} delivered={} missing={} ({}) arrived-unacknowledged={}",
                e.summary.run,
                e.summary.acknowledged(),
                e.delivered,
                self.missing(),
                if self.missing() == 0 {
                    "complete"
                } else if self.missing_are_lost {
                    "lost: none arrived for the linger time"
                } else {
                    "in flight: the sink stopped first"
                },
                self.unacknowledged()
            );
        }
        s
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
            .contains("intact=4 corrupted=1 duplicated=1 lost=2 in_flight=0 unverifiable=1"));
    }

    #[test]
    fn a_run_summary_makes_losses_at_the_end_exact() {
        let body = b"b\r\n";
        let good = crc32fast::hash(body);
        let mut v = Verify::default();
        // The run acknowledged 0..=9 except 3 (refused by the relay, which
        // delivered it anyway); the relay lost 8 and 9, the last two.
        for seq in [0, 1, 2, 3, 4, 5, 6, 7, 1] {
            deliver(&mut v, 1, &msg("5eed", seq, body, good), 64);
        }
        assert_eq!(
            v.lost(),
            0,
            "no gap below the highest: invisible without a summary"
        );
        let t0 = SystemTime::now();
        v.expect(
            RunSummary {
                run: 0x5eed,
                started_unix: 0.0,
                ended_unix: 0.0,
                failed: 1,
                acked: vec![(0, 2), (4, 9)],
            },
            t0,
        );
        let linger = Duration::from_secs(5);
        assert_eq!(v.run_state(t0, linger), RunState::Waiting);
        assert_eq!((v.in_flight(), v.lost()), (2, 0));
        assert_eq!(v.unacknowledged(), 1);
        assert_eq!(v.duplicated, 1);
        // Message 8 arrives after the summary; 9 never does.
        deliver(&mut v, 2, &msg("5eed", 8, body, good), 64);
        assert_eq!(v.in_flight(), 1);
        let later = SystemTime::now() + linger;
        assert_eq!(v.run_state(later, linger), RunState::Quiet);
        v.finish(true);
        assert_eq!((v.in_flight(), v.lost()), (0, 1));
        assert!(v
            .summary()
            .contains("acknowledged=9 delivered=8 missing=1 (lost"));
        let j = v.figures();
        assert_eq!(j["expected"], 9);
        assert_eq!(j["complete"], false);
        assert_eq!(j["lost"], 1);
        deliver(&mut v, 2, &msg("5eed", 9, body, good), 64);
        assert_eq!(v.run_state(later, linger), RunState::Complete);
    }

    #[test]
    fn merged_loops_count_duplicates_between_them_and_deliveries_once() {
        let body = b"b\r\n";
        let good = crc32fast::hash(body);
        let (mut a, mut b) = (Verify::default(), Verify::default());
        // Loop a saw 0..=4 and 2 again; loop b saw 3..=6 and 200 (past the
        // first bit word, so the sets differ in length).
        for seq in [0, 1, 2, 3, 4, 2] {
            deliver(&mut a, 1, &msg("5eed", seq, body, good), 64);
        }
        for seq in [3, 4, 5, 6, 200] {
            deliver(&mut b, 1, &msg("5eed", seq, body, good), 64);
        }
        let t0 = SystemTime::now();
        let summary = RunSummary {
            run: 0x5eed,
            started_unix: 0.0,
            ended_unix: 0.0,
            failed: 0,
            acked: vec![(0, 7)],
        };
        b.expect(summary, t0);
        let mut m = a.snapshot();
        m.merge(b.snapshot());
        // 2 twice in a; 3 and 4 once in each.
        assert_eq!((m.intact, m.duplicated), (11, 3));
        assert_eq!(m.transit.len(), 0, "no stamps");
        // Delivered over the union: 0..=6 of 0..=7.
        assert_eq!((m.in_flight(), m.unacknowledged()), (1, 1));
        assert_eq!(m.run_state(t0, Duration::from_secs(5)), RunState::Waiting);
        // A fresh copy takes what was decided on the earlier merge, and
        // counts by its own arrivals (loop a alone: 5, 6, 7 missing).
        m.finish(true);
        let mut fresh = a.snapshot();
        fresh.adopt(&m);
        assert_eq!((fresh.lost(), fresh.in_flight()), (3, 0));
    }

    #[test]
    fn transit_is_measured_from_the_stamp() {
        let body = b"b\r\n";
        let mut v = Verify::default();
        let sent = since_epoch(SystemTime::now()).saturating_sub(Duration::from_millis(250));
        let m = format!(
            "X-Smtpload-Run: 1\r\nX-Smtpload-Seq: 0\r\nX-Smtpload-Sent: {:020}\r\nX-Smtpload-Hash: crc32:{:08x}\r\n\r\nb\r\n",
            sent.as_nanos(),
            crc32fast::hash(body)
        );
        deliver(&mut v, 1, m.as_bytes(), 5);
        assert_eq!(v.intact, 1);
        let t = v.transit.max();
        assert!((250_000..1_250_000).contains(&t), "{t}us");
        assert_eq!(v.take_interval().len(), 1);
        assert_eq!(v.take_interval().len(), 0);
    }
}
