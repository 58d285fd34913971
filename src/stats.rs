//! Counters and latency histograms, and how they are printed.
//!
//! Owns: plain `u64` counters bumped on the hot path (no atomics: each loop
//! is single-threaded; several loops' statistics are combined with
//! [`Stats::merge`]) and one hdrhistogram of transaction latency in
//! microseconds (MAIL accepted -> final reply sent), recorded saturating so an
//! outlier can never fail. The session reports to it through
//! [`Observer`]; the I/O layer counts its syscalls into [`IoCounts`]. Never
//! reads the clock: callers pass durations. [`histogram`] and [`micros`]
//! are the one definition of our histogram bounds, shared with smtpload.

use crate::net::{IoCounts, TlsFailure, TlsInfo};
use crate::proto::reply::ReplyId;
use crate::proto::server::{Counts, Observer, Outcome, Timeout};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Largest latency a histogram holds: one hour, in microseconds.
pub const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// A latency histogram: 1 µs .. 1 h at 3 significant digits. Fixed bounds,
/// so recording never allocates and never fails.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3)
        .unwrap_or_else(|_| unreachable!("constant bounds are valid"))
}

/// `d` in whole microseconds, at least 1 (a histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Microseconds in a short human unit: `850us`, `12.40ms`, `3.02s`.
pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

/// The figures every latency report shows, with their names: min, p50,
/// p90, p99, p99.9 and max.
pub fn spread(h: &Histogram<u64>) -> [(&'static str, u64); 6] {
    [
        ("min", h.min()),
        ("p50", h.value_at_quantile(0.5)),
        ("p90", h.value_at_quantile(0.9)),
        ("p99", h.value_at_quantile(0.99)),
        ("p99.9", h.value_at_quantile(0.999)),
        ("max", h.max()),
    ]
}

/// `n=.. min=.. p50=.. ... max=..` in short human units, for one-line reports.
pub fn spread_line(h: &Histogram<u64>) -> String {
    let mut s = format!("n={}", h.len());
    for (name, v) in spread(h) {
        let _ = write!(s, " {name}={}", fmt_us(v));
    }
    s
}

/// A histogram's count and percentiles in microseconds, for JSON reports.
pub fn histogram_json(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "min_us": h.min(),
        "p50_us": h.value_at_quantile(0.5),
        "p90_us": h.value_at_quantile(0.9),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
    })
}

/// Plain counters; `Copy` so an interval line can diff two snapshots.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Connections accepted.
    pub connections: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Connections answered `421 4.7.0` at accept (per-client limit).
    pub connections_refused: u64,
    /// Connections closed unanswered with `--proxy-protocol`: not from a
    /// trusted address, or no valid PROXY header in time.
    pub proxy_refused: u64,
    /// Sessions closed for any timeout.
    pub timeouts: u64,
    /// Of those, for a command line not complete in time.
    pub command_timeouts: u64,
    /// Of those, for message content below the minimum rate.
    pub data_rate_timeouts: u64,
    /// Transactions begun (MAIL accepted).
    pub transactions: u64,
    /// Messages accepted (final 250).
    pub messages: u64,
    /// Messages refused at the end of data.
    pub messages_rejected: u64,
    /// Messages answered 250 but kept nowhere (a rule's accept-but-drop).
    pub messages_dropped: u64,
    /// Recipients accepted.
    pub recipients: u64,
    /// Body octets of accepted messages.
    pub body_bytes: u64,
    /// Syscalls and bytes on the wire.
    pub io: IoCounts,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.connections += o.connections;
        self.connections_open += o.connections_open;
        self.connections_refused += o.connections_refused;
        self.proxy_refused += o.proxy_refused;
        self.timeouts += o.timeouts;
        self.command_timeouts += o.command_timeouts;
        self.data_rate_timeouts += o.data_rate_timeouts;
        self.transactions += o.transactions;
        self.messages += o.messages;
        self.messages_rejected += o.messages_rejected;
        self.messages_dropped += o.messages_dropped;
        self.recipients += o.recipients;
        self.body_bytes += o.body_bytes;
        self.io += o.io;
    }
}

/// TLS: handshakes by what they agreed on, failures by why, and how long
/// the handshakes took (implicit TLS: from accept; STARTTLS: from the 220).
#[derive(Debug, Clone)]
pub struct TlsStats {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of those, resumed (ticket or session id).
    pub resumed: u64,
    /// Completed handshakes by protocol version.
    pub versions: BTreeMap<&'static str, u64>,
    /// Completed handshakes by cipher suite.
    pub ciphers: BTreeMap<&'static str, u64>,
    /// Failed or abandoned handshakes (and broken records) by class.
    pub failures: BTreeMap<&'static str, u64>,
    /// Handshake latency, microseconds.
    pub latency: Histogram<u64>,
    /// Exact sum of `latency`, microseconds.
    pub latency_sum_us: u64,
}

impl TlsStats {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Self {
            handshakes: 0,
            resumed: 0,
            versions: BTreeMap::new(),
            ciphers: BTreeMap::new(),
            failures: BTreeMap::new(),
            latency: histogram(),
            latency_sum_us: 0,
        }
    }

    /// A handshake finished after `took`.
    pub fn handshake(&mut self, info: TlsInfo, took: Duration) {
        self.handshakes += 1;
        self.resumed += u64::from(info.resumed);
        *self.versions.entry(info.version).or_default() += 1;
        *self.ciphers.entry(info.cipher).or_default() += 1;
        let us = micros(took);
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
        self.latency.saturating_record(us);
    }

    /// A TLS connection failed.
    pub fn failure(&mut self, why: TlsFailure) {
        *self.failures.entry(why.label()).or_default() += 1;
    }

    /// Whether any handshake finished or failed.
    pub fn any(&self) -> bool {
        self.handshakes > 0 || !self.failures.is_empty()
    }

    /// `TLSv1.3=n TLSv1.2=m` for reports.
    pub fn versions_text(&self) -> String {
        counts_text(&self.versions)
    }

    /// `class=n ...`, or `none`, for reports.
    pub fn failures_text(&self) -> String {
        if self.failures.is_empty() {
            "none".into()
        } else {
            counts_text(&self.failures)
        }
    }

    fn merge(&mut self, o: &TlsStats) {
        self.handshakes += o.handshakes;
        self.resumed += o.resumed;
        for (k, v) in &o.versions {
            *self.versions.entry(k).or_default() += v;
        }
        for (k, v) in &o.ciphers {
            *self.ciphers.entry(k).or_default() += v;
        }
        for (k, v) in &o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        let _ = self.latency.add(&o.latency);
        self.latency_sum_us = self.latency_sum_us.saturating_add(o.latency_sum_us);
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "versions": self.versions,
            "ciphers": self.ciphers,
            "failures": self.failures,
            "handshake_latency": histogram_json(&self.latency),
        })
    }
}

impl Default for TlsStats {
    fn default() -> Self {
        Self::new()
    }
}

/// `key=n key=n` in key order.
fn counts_text(m: &BTreeMap<&'static str, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Everything the server reports.
#[derive(Debug, Clone)]
pub struct Stats {
    /// The counters.
    pub counters: Counters,
    /// Per-transaction latency in microseconds.
    pub latency: Histogram<u64>,
    /// Exact sum of what `latency` recorded, in microseconds (the
    /// histogram keeps only buckets; Prometheus wants the sum).
    pub latency_sum_us: u64,
    /// Replies sent, by [`ReplyId`] (`ReplyId as usize`): the loop's
    /// [`Tally`](crate::proto::server::Tally), copied in before each read.
    pub replies_by_id: [u64; ReplyId::COUNT],
    /// Replies made by rules, by code.
    pub rule_replies: BTreeMap<u16, u64>,
    /// TLS handshakes and failures.
    pub tls: TlsStats,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer for Stats {
    fn counted(&mut self, c: &Counts) {
        self.counters.transactions += u64::from(c.transactions);
        self.counters.recipients += u64::from(c.recipients);
    }

    fn rule_reply(&mut self, code: u16) {
        *self.rule_replies.entry(code).or_default() += 1;
    }

    fn message(&mut self, outcome: Outcome, body_bytes: u64, latency: Duration) {
        match outcome {
            Outcome::Accepted => {
                self.counters.messages += 1;
                self.counters.body_bytes += body_bytes;
            }
            Outcome::Rejected => self.counters.messages_rejected += 1,
            Outcome::Dropped => self.counters.messages_dropped += 1,
        }
        let us = micros(latency);
        self.latency_sum_us = self.latency_sum_us.saturating_add(us);
        self.latency.saturating_record(us);
    }

    fn timeout(&mut self, kind: Timeout) {
        self.counters.timeouts += 1;
        match kind {
            Timeout::Idle => {}
            Timeout::Command => self.counters.command_timeouts += 1,
            Timeout::DataRate => self.counters.data_rate_timeouts += 1,
        }
    }
}

impl Stats {
    /// Zero counters, an empty histogram.
    pub fn new() -> Self {
        Self {
            counters: Counters::default(),
            latency: histogram(),
            latency_sum_us: 0,
            replies_by_id: [0; ReplyId::COUNT],
            rule_replies: BTreeMap::new(),
            tls: TlsStats::new(),
        }
    }

    /// AUTH exchanges that succeeded and that failed (wrong credentials).
    pub fn auth(&self) -> (u64, u64) {
        let n = |id: ReplyId| self.replies_by_id.get(id as usize).copied().unwrap_or(0);
        (n(ReplyId::AuthOk), n(ReplyId::AuthFailed))
    }

    /// Zeroes every counter and histogram (the control endpoint's `POST
    /// /reset`), keeping what describes now rather than the past: the
    /// number of open connections.
    pub fn reset(&mut self) {
        let open = self.counters.connections_open;
        *self = Self::new();
        self.counters.connections_open = open;
    }

    /// Replies sent, by class: index 2 = 2xx ... 5 = 5xx.
    pub fn replies_by_class(&self) -> [u64; 6] {
        let mut classes = [0u64; 6];
        for (code, n) in self.replies_by_code() {
            if let Some(c) = classes.get_mut(usize::from(code / 100)) {
                *c += n;
            }
        }
        classes
    }

    /// Replies sent, by code: the fixed replies plus the rules' own.
    pub fn replies_by_code(&self) -> BTreeMap<u16, u64> {
        let mut m = self.rule_replies.clone();
        for (&code, &n) in ReplyId::CODES.iter().zip(&self.replies_by_id) {
            if n > 0 {
                *m.entry(code).or_default() += n;
            }
        }
        m
    }

    /// Adds `other` (another event loop's statistics) into these.
    pub fn merge(&mut self, other: &Stats) {
        self.counters += other.counters;
        // Same fixed bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.latency_sum_us = self.latency_sum_us.saturating_add(other.latency_sum_us);
        for (a, b) in self.replies_by_id.iter_mut().zip(&other.replies_by_id) {
            *a += b;
        }
        for (&code, &n) in &other.rule_replies {
            *self.rule_replies.entry(code).or_default() += n;
        }
        self.tls.merge(&other.tls);
    }

    /// One compact line for `--stats-interval`: totals and rates since `prev`.
    // Rates and megabytes are for people: f64 precision is plenty.
    #[allow(clippy::cast_precision_loss)]
    pub fn interval_line(&self, prev: &Counters, elapsed: Duration, interval: Duration) -> String {
        let c = &self.counters;
        let classes = self.replies_by_class();
        let secs = interval.as_secs_f64().max(1e-9);
        let rate = |now: u64, then: u64| (now.saturating_sub(then)) as f64 / secs;
        format!(
            "smtpsink: t={:.0}s conns={} msgs={} ({:.0}/s) rcpts={} MB={:.1} ({:.1} MB/s) 4xx={} 5xx={} p99={}us",
            elapsed.as_secs_f64(),
            c.connections_open,
            c.messages,
            rate(c.messages, prev.messages),
            c.recipients,
            c.body_bytes as f64 / 1e6,
            rate(c.body_bytes, prev.body_bytes) / 1e6,
            classes[4],
            classes[5],
            self.latency.value_at_quantile(0.99),
        )
    }

    /// The final statistics as JSON (`--json`).
    pub fn json(&self, elapsed: Duration) -> serde_json::Value {
        let (auth_ok, auth_failed) = self.auth();
        let c = &self.counters;
        let r = self.replies_by_class();
        serde_json::json!({
            "elapsed_s": elapsed.as_secs_f64(),
            "counters": {
                "connections": c.connections,
                "connections_refused": c.connections_refused,
                "proxy_refused": c.proxy_refused,
                "timeouts": c.timeouts,
                "transactions": c.transactions,
                "messages": c.messages,
                "messages_rejected": c.messages_rejected,
                "messages_dropped": c.messages_dropped,
                "recipients": c.recipients,
                "body_bytes": c.body_bytes,
                "replies": {"2xx": r[2], "3xx": r[3], "4xx": r[4], "5xx": r[5]},
                "bytes_in": c.io.bytes_in,
                "bytes_out": c.io.bytes_out,
            },
            "latency": histogram_json(&self.latency),
            "tls": self.tls.json(),
            "auth": {"ok": auth_ok, "failed": auth_failed},
        })
    }

    /// TLS and AUTH lines of the final report, when there was any.
    fn security_lines(&self, s: &mut String) {
        let t = &self.tls;
        if t.any() {
            let _ = writeln!(
                s,
                "  tls            {:>14}  handshakes (resumed {})  {}  failed: {}",
                t.handshakes,
                t.resumed,
                t.versions_text(),
                t.failures_text()
            );
            if !t.latency.is_empty() {
                let _ = writeln!(s, "  tls handshake  {}", spread_line(&t.latency));
            }
        }
        let (auth_ok, auth_failed) = self.auth();
        if auth_ok + auth_failed > 0 {
            let _ = writeln!(s, "  auth           ok={auth_ok} failed={auth_failed}");
        }
    }

    /// The final report printed at shutdown.
    #[allow(clippy::cast_precision_loss)]
    pub fn summary(&self, elapsed: Duration) -> String {
        let c = &self.counters;
        let r = self.replies_by_class();
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut s = String::new();
        let _ = writeln!(s, "smtpsink: final statistics after {secs:.3}s");
        let _ = writeln!(s, "  connections    {:>14}", c.connections);
        if c.connections_refused > 0 {
            let _ = writeln!(
                s,
                "  refused        {:>14}  (per-client limit)",
                c.connections_refused
            );
        }
        if c.proxy_refused > 0 {
            let _ = writeln!(
                s,
                "  proxy refused  {:>14}  (untrusted, or no valid PROXY header in time)",
                c.proxy_refused
            );
        }
        let _ = writeln!(
            s,
            "  timeouts       {:>14}  (command line {}, data rate {})",
            c.timeouts, c.command_timeouts, c.data_rate_timeouts
        );
        let _ = writeln!(s, "  transactions   {:>14}", c.transactions);
        let _ = writeln!(
            s,
            "  messages       {:>14}  ({:.1}/s)",
            c.messages,
            c.messages as f64 / secs
        );
        let _ = writeln!(s, "  rejected       {:>14}", c.messages_rejected);
        if c.messages_dropped > 0 {
            let _ = writeln!(
                s,
                "  dropped        {:>14}  (250 sent, kept nowhere: a rule)",
                c.messages_dropped
            );
        }
        let _ = writeln!(s, "  recipients     {:>14}", c.recipients);
        let _ = writeln!(
            s,
            "  body bytes     {:>14}  ({:.2} MB/s)",
            c.body_bytes,
            c.body_bytes as f64 / secs / 1e6
        );
        let _ = writeln!(
            s,
            "  replies        2xx={} 3xx={} 4xx={} 5xx={}",
            r[2], r[3], r[4], r[5]
        );
        let _ = writeln!(
            s,
            "  syscalls       read={} write={}  bytes in={} out={}",
            c.io.reads, c.io.writes, c.io.bytes_in, c.io.bytes_out
        );
        self.security_lines(&mut s);
        let h = &self.latency;
        if h.is_empty() {
            let _ = writeln!(s, "  latency        no transactions");
        } else {
            let _ = writeln!(
                s,
                "  latency (us)   p50={} p90={} p99={} p99.9={} max={}  (MAIL to final reply, n={})",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.9),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.len()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts these replies into `s`, as the loop's tally would.
    fn replies(s: &mut Stats, ids: &[(ReplyId, u64)]) {
        for &(id, n) in ids {
            s.replies_by_id[id as usize] += n;
        }
    }

    #[test]
    fn replies_by_class_and_latency() {
        let mut s = Stats::new();
        // One 2xx, one 3xx and one 5xx, then two more 2xx and a recipient.
        replies(
            &mut s,
            &[
                (ReplyId::Ok, 1),
                (ReplyId::StartData, 1),
                (ReplyId::Unrecognized, 1),
            ],
        );
        replies(&mut s, &[(ReplyId::SenderOk, 1), (ReplyId::Queued, 1)]);
        s.counted(&Counts {
            recipients: 1,
            ..Counts::default()
        });
        assert_eq!(s.replies_by_id[ReplyId::Ok as usize], 1);
        assert_eq!(
            s.replies_by_code().into_iter().collect::<Vec<_>>(),
            [(250, 3), (354, 1), (500, 1)]
        );
        assert_eq!(s.replies_by_class(), [0, 0, 3, 1, 0, 1]);
        assert_eq!(s.counters.recipients, 1);
        s.message(Outcome::Accepted, 10, Duration::from_micros(250));
        // Saturates, never fails.
        s.message(Outcome::Rejected, 99, Duration::from_secs(100_000));
        assert_eq!(s.latency.len(), 2);
        assert_eq!(
            (
                s.counters.messages,
                s.counters.messages_rejected,
                s.counters.body_bytes
            ),
            (1, 1, 10)
        );
        assert!(s.summary(Duration::from_secs(1)).contains("p50=250"));
    }

    #[test]
    fn statistics_of_several_loops_merge() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.counted(&Counts {
            transactions: 1,
            ..Counts::default()
        });
        a.message(Outcome::Accepted, 100, Duration::from_micros(10));
        a.counters.io.reads = 3;
        b.counted(&Counts {
            transactions: 2,
            recipients: 1,
        });
        replies(&mut b, &[(ReplyId::TooManyRecipients, 1)]);
        b.timeout(Timeout::Command);
        b.message(Outcome::Accepted, 50, Duration::from_millis(1));
        b.counters.io.reads = 4;
        a.merge(&b);
        let c = a.counters;
        assert_eq!((c.transactions, c.messages, c.body_bytes), (3, 2, 150));
        assert_eq!(
            (c.recipients, a.replies_by_class()[4], c.io.reads),
            (1, 1, 7)
        );
        assert_eq!(
            (c.timeouts, c.command_timeouts, c.data_rate_timeouts),
            (1, 1, 0)
        );
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.latency.max(), b.latency.max());
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_millis(3)), 3000);
    }
}
