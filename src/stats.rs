//! Counters and latency histograms, and how they are printed.
//!
//! Owns: plain `u64` counters bumped on the hot path (no atomics: the loop is
//! single-threaded) and one hdrhistogram of transaction latency in
//! microseconds (MAIL accepted -> final reply sent), recorded saturating so an
//! outlier can never fail. Never reads the clock: callers pass durations.

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::time::Duration;

/// Plain counters; `Copy` so an interval line can diff two snapshots.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub connections: u64,
    pub connections_open: u64,
    pub timeouts: u64,
    pub transactions: u64,
    pub messages: u64,
    pub messages_rejected: u64,
    pub recipients: u64,
    pub body_bytes: u64,
    /// Replies by class: index 2 = 2xx ... 5 = 5xx.
    pub replies: [u64; 6],
    pub read_calls: u64,
    pub write_calls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Everything the server reports.
#[derive(Debug, Clone)]
pub struct Stats {
    pub counters: Counters,
    /// Per-transaction latency in microseconds.
    pub latency: Histogram<u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            counters: Counters::default(),
            // 1 µs .. 1 h at 3 significant digits; fixed bounds, so recording never allocates.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant bounds are valid")),
        }
    }

    /// Counts one reply by its class digit.
    #[inline]
    pub fn reply(&mut self, reply: &[u8]) {
        let class = usize::from(reply.first().map_or(0, |c| c.wrapping_sub(b'0')));
        if let Some(n) = self.counters.replies.get_mut(class) {
            *n += 1;
        }
    }

    /// Records one transaction's latency.
    #[inline]
    pub fn record_latency(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(us);
    }

    /// One compact line for `--stats-interval`: totals and rates since `prev`.
    pub fn interval_line(&self, prev: &Counters, elapsed: Duration, interval: Duration) -> String {
        let c = &self.counters;
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
            c.replies[4],
            c.replies[5],
            self.latency.value_at_quantile(0.99),
        )
    }

    /// The final report printed at shutdown.
    pub fn summary(&self, elapsed: Duration) -> String {
        let c = &self.counters;
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut s = String::new();
        let _ = writeln!(s, "smtpsink: final statistics after {secs:.3}s");
        let _ = writeln!(s, "  connections    {:>14}", c.connections);
        let _ = writeln!(s, "  timeouts       {:>14}", c.timeouts);
        let _ = writeln!(s, "  transactions   {:>14}", c.transactions);
        let _ = writeln!(
            s,
            "  messages       {:>14}  ({:.1}/s)",
            c.messages,
            c.messages as f64 / secs
        );
        let _ = writeln!(s, "  rejected       {:>14}", c.messages_rejected);
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
            c.replies[2], c.replies[3], c.replies[4], c.replies[5]
        );
        let _ = writeln!(
            s,
            "  syscalls       read={} write={}  bytes in={} out={}",
            c.read_calls, c.write_calls, c.bytes_in, c.bytes_out
        );
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

    #[test]
    fn replies_by_class_and_latency() {
        let mut s = Stats::new();
        s.reply(b"250 2.0.0 Ok\r\n");
        s.reply(b"354 go\r\n");
        s.reply(b"550 no\r\n");
        s.reply(b"");
        assert_eq!(s.counters.replies, [1, 0, 1, 1, 0, 1]);
        s.record_latency(Duration::from_micros(250));
        s.record_latency(Duration::from_secs(100_000)); // saturates, never fails
        assert_eq!(s.latency.len(), 2);
        assert!(s.summary(Duration::from_secs(1)).contains("p50=250"));
    }
}
